-- Run once as the master user on the `reports` database's instance.
CREATE USER reporter;
GRANT rds_iam TO reporter;
GRANT CONNECT ON DATABASE reports TO reporter;
