# Generated secrets. None is written in code: they are made here, kept in Secrets
# Manager (encrypted with the CMK) and in the encrypted terraform state, and copied
# into the Kubernetes Secret `homepocket-relay` (docs/DEPLOY.md).

# URL-safe alphabets: these end up inside DATABASE_URL and REDIS_URL.
resource "random_password" "db" {
  length  = 40
  special = false
}

resource "random_password" "redis" {
  length  = 64
  special = false
}

# The key of the HMAC behind every book_ref. Never rotated: a new key makes every
# book unreachable (README, "Keep ID_HASH_KEY safe"). prevent_destroy guards it.
resource "random_password" "id_hash_key" {
  length  = 64
  special = false

  lifecycle {
    prevent_destroy = true
  }
}

resource "aws_secretsmanager_secret" "relay" {
  #checkov:skip=CKV2_AWS_57:ID_HASH_KEY must never rotate (a new key orphans every book); the database and Redis passwords rotate by replacing their random_password and rolling the pods (docs/DEPLOY.md), which a rotation Lambda cannot coordinate.
  name                    = "${local.name}/relay"
  description             = "Environment of the Home Pocket relay: DATABASE_URL, REDIS_URL, ID_HASH_KEY"
  kms_key_id              = aws_kms_key.main.arn
  recovery_window_in_days = 30
}

resource "aws_secretsmanager_secret_version" "relay" {
  secret_id = aws_secretsmanager_secret.relay.id
  secret_string = jsonencode({
    DATABASE_URL = "postgresql://${aws_db_instance.main.username}:${random_password.db.result}@${aws_db_instance.main.address}:${aws_db_instance.main.port}/${aws_db_instance.main.db_name}?sslmode=require"
    REDIS_URL    = "rediss://:${random_password.redis.result}@${aws_elasticache_replication_group.main.primary_endpoint_address}:6379/0"
    ID_HASH_KEY  = random_password.id_hash_key.result
  })
}
