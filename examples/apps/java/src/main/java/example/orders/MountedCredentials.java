package example.orders;

import com.zaxxer.hikari.HikariCredentialsProvider;
import com.zaxxer.hikari.util.Credentials;

import java.io.IOException;
import java.nio.charset.CharacterCodingException;
import java.nio.file.AccessDeniedException;
import java.nio.file.Files;
import java.nio.file.NoSuchFileException;
import java.nio.file.NotLinkException;
import java.nio.file.Path;
import java.time.Instant;
import java.time.OffsetDateTime;
import java.time.format.DateTimeParseException;

/**
 * The rdsiam Secret mounted as a volume, read one generation at a time.
 *
 * <p>Kubelet writes each version of a Secret volume into a new {@code ..TIMESTAMP} directory and
 * then renames a symlink over {@code ..data}; the per-key files ({@code password -> ..data/password})
 * follow it. Reading the keys one by one through those links could mix two generations (an old
 * user name with a new token), so {@link #current()} resolves {@code ..data} once, reads every key
 * from the directory it names, and starts over if kubelet swapped or deleted it meanwhile.
 *
 * <p>As a {@link HikariCredentialsProvider} it hands HikariCP the user name and token of the
 * current generation each time the pool opens a physical connection.
 */
final class MountedCredentials implements HikariCredentialsProvider {

    /** One generation of the mount. {@code toString()} leaves the token out. */
    record Snapshot(String generation, String username, String password, String host, int port,
                    String dbname, Instant expiresAt) {
        @Override
        public String toString() {
            return "Snapshot[generation=" + generation + ", username=" + username + ", host=" + host
                    + ", port=" + port + ", dbname=" + dbname + ", expiresAt=" + expiresAt + "]";
        }
    }

    private static final int MAX_ATTEMPTS = 50; // re-resolutions of ..data while kubelet keeps swapping

    private final Path dir;
    private final Path dataLink;
    // The generation read last; re-read only when ..data names another directory.
    private volatile Snapshot cached;

    MountedCredentials(Path dir) {
        this.dir = dir;
        this.dataLink = dir.resolve("..data");
    }

    /** Called by HikariCP for every new physical connection (and once when the pool starts). */
    @Override
    public Credentials getCredentials() {
        try {
            Snapshot s = current();
            return Credentials.of(s.username(), s.password());
        } catch (IOException e) {
            // HikariCP keeps this as the connection failure and reports it from getConnection().
            throw new IllegalStateException(e.getMessage(), e);
        }
    }

    /** The generation HikariCP was handed last: with one connection at a time, the one in use. */
    String lastGeneration() {
        Snapshot s = cached;
        return s == null ? "?" : s.generation();
    }

    /** All keys of the current generation; costs one readlink while the mount is unchanged. */
    Snapshot current() throws IOException {
        Snapshot s = load();
        if (s.expiresAt() != null && Instant.now().isAfter(s.expiresAt())) {
            throw new IOException("the token in " + dir + " expired at " + s.expiresAt() + ": the Secret is "
                    + "not being refreshed; check the RdsIamCredential's Ready condition (kubectl describe "
                    + "rdsiamcredential NAME)");
        }
        return s;
    }

    private Snapshot load() throws IOException {
        String target = readDataLink();
        for (int attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
            Snapshot s = cached;
            if (s != null && s.generation().equals(target)) {
                return s;
            }
            Snapshot read = null;
            NoSuchFileException missing = null;
            try {
                read = readGeneration(target);
            } catch (NoSuchFileException e) {
                missing = e; // kubelet removed this generation after swapping ..data, or a key is absent
            }
            String now = readDataLink();
            if (read != null && now.equals(target)) {
                cached = read;
                return read;
            }
            if (read == null && now.equals(target)) { // no swap in progress: the key is really missing
                throw new IOException(dir + " has no key " + Path.of(missing.getFile()).getFileName()
                        + " (it needs username, password, host, port, dbname): the Secret is not written by "
                        + "rdsiam yet, or the volume's items: select only some keys; check the "
                        + "RdsIamCredential's Ready condition (kubectl describe rdsiamcredential NAME)");
            }
            target = now;
        }
        throw new IOException(dir + " changed " + MAX_ATTEMPTS + " times while being read; giving up");
    }

    private String readDataLink() throws IOException {
        try {
            return Files.readSymbolicLink(dataLink).toString();
        } catch (NoSuchFileException | NotLinkException e) {
            throw new IOException(Files.isDirectory(dir)
                    ? dir + " has no ..data symlink, so it is not a Secret volume that kubelet updates (a "
                      + "subPath mount or copied files would never see a new token): mount the whole Secret "
                      + "as a volume directory without subPath"
                    : "no credential directory at " + dir + ": mount the rdsiam Secret as a volume there "
                      + "(volumes[].secret.secretName and volumeMounts[].mountPath, without subPath)");
        } catch (AccessDeniedException e) {
            throw unreadable(dir);
        }
    }

    private Snapshot readGeneration(String target) throws IOException {
        Path gen = dir.resolve(target);
        int port;
        try {
            port = Integer.parseInt(read(gen, "port"));
        } catch (NumberFormatException e) {
            throw new IOException(dir + "/port is not a number");
        }
        Instant expiresAt = null; // optional key
        if (Files.exists(gen.resolve("expires-at"))) {
            try {
                expiresAt = OffsetDateTime.parse(read(gen, "expires-at")).toInstant();
            } catch (DateTimeParseException e) {
                throw new IOException(dir + "/expires-at is not an RFC 3339 instant");
            }
        }
        return new Snapshot(target, read(gen, "username"), read(gen, "password"), read(gen, "host"), port,
                read(gen, "dbname"), expiresAt);
    }

    private String read(Path gen, String key) throws IOException {
        Path file = gen.resolve(key);
        try {
            return Files.readString(file).strip();
        } catch (AccessDeniedException e) {
            throw unreadable(file);
        } catch (CharacterCodingException e) {
            throw new IOException(dir + "/" + key + " is not UTF-8 text");
        }
    }

    private static IOException unreadable(Path path) {
        return new IOException("permission denied reading " + path + ": the mounted Secret is not readable "
                + "by this user. Check the volume's defaultMode (0400 lets only root read; use 0440 with the "
                + "pod's securityContext.fsGroup, or 0444) and the pod's runAsUser and fsGroup");
    }
}
