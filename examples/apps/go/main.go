// orders-app: a pgx v5 pool that logs in to RDS for PostgreSQL with the IAM token that rdsiam keeps
// in a Secret mounted as a volume. BeforeConnect reads the mount (one generation through ..data) for
// every new connection, so each login uses the current token; open connections are untouched (RDS
// checks the token only at login).
//
// To show rotations, the loop logs in anew once a second: it takes a connection from the pool, runs
// SELECT current_user and closes that connection instead of returning it (Hijack), so the next
// Acquire makes the pool dial again. A real app just uses the pool; it dials whenever it grows or
// replaces a connection (MaxConnLifetime), and each of those logins reads the mount.
//
// Environment:
//
//	RDSIAM_MOUNT    the Secret volume (default /var/run/secrets/rdsiam/orders-db)
//	PGSSLROOTCERT   the RDS CA bundle (default /etc/rds/global-bundle.pem)
//	PGSSLMODE       default verify-full: the certificate must name the Secret's host
//	PGHOSTADDR      optional, as libpq's hostaddr: dial this address instead of resolving the
//	                host, still verifying the certificate against the host name
//	INTERVAL        seconds between logins (default 1)
package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

const generationKey = "rdsiam.generation" // in pgconn's CustomData, for the log line

func main() {
	log.SetFlags(log.LstdFlags | log.LUTC)
	mount := env("RDSIAM_MOUNT", "/var/run/secrets/rdsiam/orders-db")
	interval, err := strconv.ParseFloat(env("INTERVAL", "1"), 64)
	if err != nil || interval <= 0 {
		log.Fatalf("INTERVAL must be a positive number of seconds, not %q", os.Getenv("INTERVAL"))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	pool, err := newPool(ctx, mount)
	if err != nil {
		log.Fatalf("cannot set up the pool: %v", err)
	}
	defer pool.Close()

	ticker := time.NewTicker(time.Duration(interval * float64(time.Second)))
	defer ticker.Stop()
	for {
		// Not ctx: a SIGTERM lets the login under way finish, then the loop ends.
		if user, generation, err := loginOnce(context.Background(), pool); err != nil {
			log.Printf("login failed: %v", err)
		} else {
			log.Printf("login ok user=%s generation=%s", user, generation)
		}
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}

// newPool builds the pool's configuration from the mount's current host, port and database and the
// TLS settings; the credentials themselves are read again by BeforeConnect for each new connection.
func newPool(ctx context.Context, mount string) (*pgxpool.Pool, error) {
	cred, err := ReadMount(mount)
	if err != nil {
		return nil, err
	}
	// No password in this string: BeforeConnect sets it. url.URL escapes every part.
	query := url.Values{
		"sslmode":          {env("PGSSLMODE", "verify-full")},
		"sslrootcert":      {env("PGSSLROOTCERT", "/etc/rds/global-bundle.pem")},
		"application_name": {"orders-app"},
	}
	connString := (&url.URL{
		Scheme:   "postgres",
		User:     url.User(cred.Username),
		Host:     fmt.Sprintf("%s:%d", cred.Host, cred.Port),
		Path:     "/" + cred.DBName,
		RawQuery: query.Encode(),
	}).String()
	config, err := pgxpool.ParseConfig(connString)
	if err != nil {
		return nil, err
	}
	if addr := os.Getenv("PGHOSTADDR"); addr != "" {
		config.ConnConfig.LookupFunc = func(context.Context, string) ([]string, error) { return []string{addr}, nil }
	}
	config.BeforeConnect = func(ctx context.Context, cc *pgx.ConnConfig) error {
		cred, err := ReadMount(mount)
		if err != nil {
			return err
		}
		if err := cred.CheckExpiry(time.Now(), mount); err != nil {
			return err
		}
		cc.User, cc.Password, cc.Database, cc.Port = cred.Username, cred.Password, cred.DBName, cred.Port
		if cc.Host != cred.Host { // the RdsIamCredential's endpoint was changed: dial and verify the new one
			cc.Host = cred.Host
			if cc.TLSConfig != nil && cc.TLSConfig.ServerName != "" {
				tlsConfig := cc.TLSConfig.Clone()
				tlsConfig.ServerName = cred.Host
				cc.TLSConfig = tlsConfig
			}
		}
		// cc is this connection's own copy: tag the connection with the generation it logged in with.
		next := cc.AfterConnect
		cc.AfterConnect = func(ctx context.Context, pgConn *pgconn.PgConn) error {
			pgConn.CustomData()[generationKey] = cred.Generation
			if next != nil {
				return next(ctx, pgConn)
			}
			return nil
		}
		return nil
	}
	return pgxpool.NewWithConfig(ctx, config)
}

// loginOnce opens a new pooled connection, asks who it is, and closes it.
func loginOnce(ctx context.Context, pool *pgxpool.Pool) (user, generation string, err error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return "", "", err
	}
	// Out of the pool and closed afterwards, so that the next Acquire logs in again (the demo's point).
	raw := conn.Hijack()
	defer raw.Close(context.Background())
	generation, _ = raw.PgConn().CustomData()[generationKey].(string)
	if err := raw.QueryRow(ctx, "SELECT current_user").Scan(&user); err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) {
			return "", generation, fmt.Errorf("query: %s (SQLSTATE %s)", pgErr.Message, pgErr.Code)
		}
		return "", generation, err
	}
	return user, generation, nil
}

func env(name, fallback string) string {
	if value := os.Getenv(name); value != "" {
		return value
	}
	return fallback
}
