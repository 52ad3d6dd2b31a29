package example.orders;

import com.zaxxer.hikari.HikariConfig;
import com.zaxxer.hikari.HikariDataSource;
import org.postgresql.ds.PGSimpleDataSource;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

import java.io.IOException;
import java.nio.file.Path;
import java.sql.Connection;
import java.sql.ResultSet;
import java.sql.Statement;
import java.util.function.Supplier;

/**
 * Opens a new pooled connection every second, runs {@code SELECT current_user} and logs one line
 * per login, so that a rotation of the mounted token shows up as a change of generation with no
 * failed login.
 *
 * <p>Two modes, chosen by the environment:
 * <ul>
 *   <li>{@code JDBC_URL} unset: RDS IAM. Host, port and database come from the mounted rdsiam Secret
 *       ({@code RDSIAM_MOUNT}); the user and token of the current generation from
 *       {@link MountedCredentials}, HikariCP's credentials provider, for every new connection.
 *       TLS: verify-full against {@code PGSSLROOTCERT}.</li>
 *   <li>{@code JDBC_URL} set: a plain HikariCP pool on that URL, for an app behind a local proxy
 *       that does the IAM login; no rdsiam code runs.</li>
 * </ul>
 */
public final class OrdersApp {

    private static final Logger log = LoggerFactory.getLogger("orders-app");

    public static void main(String[] args) throws InterruptedException {
        String jdbcUrl = System.getenv("JDBC_URL");
        Supplier<HikariDataSource> openPool;
        Supplier<String> generation;
        if (jdbcUrl != null && !jdbcUrl.isBlank()) {
            openPool = () -> new HikariDataSource(plainConfig(jdbcUrl));
            generation = () -> null;
        } else {
            MountedCredentials mount = new MountedCredentials(
                    Path.of(env("RDSIAM_MOUNT", "/var/run/secrets/rdsiam/orders-db")));
            String rootCert = env("PGSSLROOTCERT", "/etc/rds/global-bundle.pem");
            openPool = () -> new HikariDataSource(iamConfig(mount, rootCert));
            generation = mount::lastGeneration;
        }

        HikariDataSource pool = null;
        while (true) {
            try {
                if (pool == null) {
                    pool = openPool.get(); // RDS IAM: as soon as the mount can be read
                }
                loginOnce(pool, generation);
            } catch (Exception e) {
                log.warn("login failed: {}", reason(e));
            }
            Thread.sleep(1000);
        }
    }

    private static HikariConfig iamConfig(MountedCredentials mount, String rootCert) {
        MountedCredentials.Snapshot first;
        try {
            first = mount.current();
        } catch (IOException e) {
            throw new IllegalStateException(e.getMessage(), e);
        }
        // Where to connect is read once: an RdsIamCredential's host, port and database do not
        // rotate. The user and token are not set here; HikariCP asks the provider for them.
        PGSimpleDataSource pg = new PGSimpleDataSource();
        pg.setServerNames(new String[] {first.host()});
        pg.setPortNumbers(new int[] {first.port()});
        pg.setDatabaseName(first.dbname());
        pg.setSslMode("verify-full"); // RDS refuses IAM logins without TLS; verify-full also checks the host name
        pg.setSslRootCert(rootCert);
        pg.setApplicationName("orders-app");

        HikariConfig config = baseConfig();
        config.setDataSource(pg);
        // HikariCP 7: PoolBase.newConnection() calls the provider for every new physical connection.
        config.setCredentialsProvider(mount);
        return config;
    }

    private static HikariConfig plainConfig(String jdbcUrl) {
        HikariConfig config = baseConfig();
        config.setJdbcUrl(jdbcUrl);
        return config;
    }

    private static HikariConfig baseConfig() {
        HikariConfig config = new HikariConfig();
        config.setPoolName("orders");
        // One connection at a time and no idle ones kept: every getConnection() below is a new login
        // (and MountedCredentials.lastGeneration() is that login's generation).
        config.setMaximumPoolSize(1);
        config.setMinimumIdle(0);
        // Start without a connection: failures are reported by the loop, which keeps going.
        config.setInitializationFailTimeout(-1);
        // A refused login is reported after 5 s rather than HikariCP's default 30 s.
        config.setConnectionTimeout(5000);
        return config;
    }

    private static void loginOnce(HikariDataSource pool, Supplier<String> generation) throws Exception {
        try (Connection c = pool.getConnection();
             Statement st = c.createStatement();
             ResultSet rs = st.executeQuery("SELECT current_user, pg_backend_pid()")) {
            rs.next();
            String gen = generation.get();
            log.info("login ok user={}{} pid={}", rs.getString(1), gen == null ? "" : " generation=" + gen,
                    rs.getInt(2));
            // Only to log in every second: mark the connection evicted, so that HikariCP closes it
            // when it is returned instead of pooling it (a real app keeps HikariCP's defaults).
            pool.getHikariPoolMXBean().softEvictConnections();
        }
    }

    /** The innermost message: for a HikariCP timeout, the server's or the mount's reason. */
    private static String reason(Throwable e) {
        Throwable t = e;
        while (t.getCause() != null && t.getCause() != t) {
            t = t.getCause();
        }
        if (t == e || String.valueOf(e.getMessage()).equals(t.getMessage())) {
            return String.valueOf(t.getMessage());
        }
        return e.getMessage() + ": " + t.getMessage();
    }

    private static String env(String name, String fallback) {
        String value = System.getenv(name);
        return value == null || value.isBlank() ? fallback : value;
    }
}
