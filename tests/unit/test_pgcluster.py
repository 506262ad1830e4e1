import psycopg
import pytest

pytestmark = pytest.mark.postgresql


def test_the_test_cluster_takes_a_password_connection(pg_dsn, pg_cluster):
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("msgw",)
    nopw = pg_dsn.replace(":msgw-TEST-only-password", "")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(nopw, connect_timeout=5)
