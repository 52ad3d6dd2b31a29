-- Run once as the master user (the same database user as examples/basic).
CREATE USER app_user;
GRANT rds_iam TO app_user;
GRANT CONNECT ON DATABASE orders TO app_user;
