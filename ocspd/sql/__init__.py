"""SQL of ocspd: numbered migrations and named queries (installed as ``ocspd.sql``)."""
