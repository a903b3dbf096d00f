variable "name" {
  description = "Prefix of every resource name (buckets add the account id and region to stay globally unique)."
  type        = string
  default     = "mlops"
  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,20}$", var.name))
    error_message = "name must be 2-21 lowercase letters, digits or dashes, starting with a letter."
  }
}

variable "region" {
  description = "AWS region."
  type        = string
  default     = "eu-west-1"
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}

variable "vpc_id" {
  description = "Existing VPC for the cluster and the database."
  type        = string
}

variable "private_subnet_ids" {
  description = "Private subnets (at least two availability zones) for the nodes and the database."
  type        = list(string)
  validation {
    condition     = length(var.private_subnet_ids) >= 2
    error_message = "private_subnet_ids needs subnets in at least two availability zones."
  }
}

variable "kubernetes_version" {
  description = "EKS Kubernetes version."
  type        = string
  default     = "1.31"
}

variable "cluster_endpoint_public_access_cidrs" {
  description = "CIDRs allowed to reach the public API endpoint; empty keeps the endpoint private only."
  type        = list(string)
  default     = []
}

variable "k8s_namespace" {
  description = "Namespace of the step pods (runtime.namespace; k8s/namespace.yaml)."
  type        = string
  default     = "mlops"
}

variable "step_service_account" {
  description = "Service account of the step pods (runtime.service_account; k8s/rbac.yaml)."
  type        = string
  default     = "mlops-steps"
}

variable "mlflow_service_account" {
  description = "Service account of the MLflow server pods."
  type        = string
  default     = "mlflow"
}

variable "cpu_instance_types" {
  description = "Instance types of the CPU node group (Airflow, MLflow, CPU steps)."
  type        = list(string)
  default     = ["m6i.xlarge"]
}

variable "cpu_min_size" {
  description = "Minimum CPU nodes."
  type        = number
  default     = 1
}

variable "cpu_max_size" {
  description = "Maximum CPU nodes."
  type        = number
  default     = 4
}

variable "gpu_instance_types" {
  description = "Instance types of the GPU node group (training)."
  type        = list(string)
  default     = ["g5.xlarge"]
}

variable "gpu_max_size" {
  description = "Maximum GPU nodes; the group scales from zero when no training pod is pending."
  type        = number
  default     = 2
}

variable "db_instance_class" {
  description = "RDS instance class of the Postgres for Airflow metadata and the MLflow backend store."
  type        = string
  default     = "db.t4g.medium"
}

variable "db_allocated_storage_gb" {
  description = "Initial RDS storage in GiB (autoscaling up to 5x)."
  type        = number
  default     = 50
}

variable "db_multi_az" {
  description = "Run the database in two availability zones."
  type        = bool
  default     = true
}

variable "noncurrent_version_retention_days" {
  description = "Days an overwritten or deleted object version is kept in the buckets."
  type        = number
  default     = 90
}

variable "log_retention_days" {
  description = "Days the cluster's control-plane logs are kept."
  type        = number
  default     = 365
}
