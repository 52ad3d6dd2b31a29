"""Driver integrations of the in-pod library: one module per driver, each importing its driver lazily.

- :mod:`rdsiam.integrations.psycopg`: psycopg 3 ``connect`` and ``psycopg_pool`` pools
- :mod:`rdsiam.integrations.psycopg2`: psycopg2 ``connect`` and its pools
- :mod:`rdsiam.integrations.sqlalchemy`: SQLAlchemy engines, sync and asyncio
- :mod:`rdsiam.integrations.asyncpg`: asyncpg ``connect`` and pools
- :mod:`rdsiam.integrations.django`: Django database backends (PostgreSQL, MySQL)
- :mod:`rdsiam.integrations.pymysql`: PyMySQL ``connect`` (cleartext over TLS, as RDS MySQL needs)

Every new connection made through them reads the mounted Secret's current generation;
connections already open are left alone (RDS checks the token only at login).
"""
