output "data_bucket" {
  description = "Artifact root of the product: set MLOPS_PATHS__ARTIFACT_ROOT=s3://<this>."
  value       = aws_s3_bucket.main["data"].bucket
}

output "mlflow_artifact_bucket" {
  description = "The MLflow server's --artifacts-destination bucket."
  value       = aws_s3_bucket.main["mlflow"].bucket
}

output "ecr_repository_urls" {
  description = "Image repositories by Dockerfile target; set MLOPS_RUNTIME__IMAGE to the step URL with a tag."
  value       = { for k, r in aws_ecr_repository.main : k => r.repository_url }
}

output "step_role_arn" {
  description = "IRSA role of the step pods: the eks.amazonaws.com/role-arn annotation in k8s/rbac.yaml."
  value       = aws_iam_role.irsa["steps"].arn
}

output "mlflow_role_arn" {
  description = "IRSA role of the MLflow server's service account."
  value       = aws_iam_role.irsa["mlflow"].arn
}

output "db_endpoint" {
  description = "Postgres host:port for Airflow (database airflow) and MLflow (databases mlflow, mlflow_auth)."
  value       = aws_db_instance.main.endpoint
}

output "db_master_secret_arn" {
  description = "Secrets Manager secret holding the generated master password."
  value       = aws_db_instance.main.master_user_secret[0].secret_arn
}

output "cluster_name" {
  description = "EKS cluster name (aws eks update-kubeconfig --name <this>)."
  value       = aws_eks_cluster.main.name
}

output "cluster_endpoint" {
  description = "EKS API endpoint."
  value       = aws_eks_cluster.main.endpoint
}

output "kms_key_arn" {
  description = "The key that encrypts buckets, database, images, cluster secrets and logs."
  value       = aws_kms_key.main.arn
}
