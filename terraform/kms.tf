# One customer-managed key encrypts the buckets, the database, the image repositories, the cluster's secrets and
# its logs.
data "aws_iam_policy_document" "kms" {
  # checkov:skip=CKV_AWS_111: in a key policy, resource "*" means this key only; the account root must administer it
  # checkov:skip=CKV_AWS_356: in a key policy, resource "*" means this key only
  # checkov:skip=CKV_AWS_109: in a key policy, resource "*" means this key only; without it the key is unmanageable
  statement {
    sid       = "AccountAdministers"
    actions   = ["kms:*"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:root"]
    }
  }
  statement {
    sid       = "CloudWatchLogsUse"
    actions   = ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["logs.${var.region}.amazonaws.com"]
    }
    condition {
      test     = "ArnLike"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["arn:${local.partition}:logs:${var.region}:${local.account_id}:*"]
    }
  }
}

resource "aws_kms_key" "main" {
  description             = "${var.name}: buckets, database, images, cluster secrets and logs"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.kms.json
}

resource "aws_kms_alias" "main" {
  name          = "alias/${var.name}"
  target_key_id = aws_kms_key.main.key_id
}
