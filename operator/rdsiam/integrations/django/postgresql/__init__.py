"""Django PostgreSQL backend reading the token from the rdsiam mount (see ``rdsiam.integrations.django``)."""
