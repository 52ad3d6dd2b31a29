-- Run once as the master user. RDS PostgreSQL: the rds_iam role switches the user to IAM authentication.
CREATE USER app_user;
GRANT rds_iam TO app_user;
GRANT CONNECT ON DATABASE orders TO app_user;
