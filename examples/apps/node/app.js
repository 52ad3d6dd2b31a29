'use strict'
// orders-app: a node-postgres pool that logs in to RDS for PostgreSQL with the IAM token that rdsiam
// keeps in a Secret mounted as a volume. The pool's `password` is an async function: node-postgres
// calls it for every new connection, and it reads the mount (one generation through ..data), so each
// login uses the current token; open connections are untouched (RDS checks the token only at login).
//
// node-postgres takes user, host, port and database from the pool's options once, so they come from
// the mount at start; only the token rotates, which is what rdsiam rotates. If the Secret ever names
// another user or endpoint (the RdsIamCredential was edited), logins fail saying so: restart the app.
//
// To show rotations, the loop logs in anew once a second: it takes a client from the pool, runs
// SELECT current_user and destroys that client instead of returning it (release(true)), so the next
// connect() makes the pool dial again. A real app just uses the pool; it dials whenever it grows or
// replaces a client (idleTimeoutMillis, maxLifetimeSeconds), and each of those logins reads the mount.
//
// Environment:
//   RDSIAM_MOUNT    the Secret volume (default /var/run/secrets/rdsiam/orders-db)
//   PGSSLROOTCERT   the RDS CA bundle (default /etc/rds/global-bundle.pem)
//   PGSSLMODE       verify-full (default: the certificate must name the Secret's host) or verify-ca
//   PGHOSTADDR      optional, as libpq's hostaddr: dial this address instead of resolving the host,
//                   still verifying the certificate against the host name
//   INTERVAL        seconds between logins (default 1)

const fs = require('fs')
const pg = require('pg')
const { readMount, checkExpiry, MountError } = require('./mount')

const mount = process.env.RDSIAM_MOUNT || '/var/run/secrets/rdsiam/orders-db'
const caFile = process.env.PGSSLROOTCERT || '/etc/rds/global-bundle.pem'
const sslmode = process.env.PGSSLMODE || 'verify-full'
const interval = Number(process.env.INTERVAL || 1)

function log (line) {
  console.log(`${new Date().toISOString()} ${line}`)
}

async function newPool () {
  const first = await readMount(mount)
  if (sslmode !== 'verify-full' && sslmode !== 'verify-ca') {
    throw new Error(`PGSSLMODE must be verify-full or verify-ca, not ${sslmode}: RDS IAM logins need TLS`)
  }
  const ssl = { ca: fs.readFileSync(caFile), servername: first.host, rejectUnauthorized: true }
  if (sslmode === 'verify-ca') ssl.checkServerIdentity = () => undefined // the chain, not the name

  // Which generation each connection logged in with, for the log line only (keyed by the
  // connection's parameters, which node-postgres passes to the password function).
  const generations = new WeakMap()
  const pool = new pg.Pool({
    host: process.env.PGHOSTADDR || first.host,
    port: first.port,
    user: first.username,
    database: first.dbname,
    ssl,
    application_name: 'orders-app',
    connectionTimeoutMillis: 10000,
    async password (params) {
      const cred = await readMount(mount)
      checkExpiry(cred, mount)
      if (cred.username !== first.username || cred.host !== first.host || cred.port !== first.port ||
          cred.dbname !== first.dbname) {
        throw new MountError(`${mount} now names ${cred.username}@${cred.host}:${cred.port}/${cred.dbname}, but ` +
          `this pool was made for ${first.username}@${first.host}:${first.port}/${first.dbname} (node-postgres ` +
          'reads them once): restart the app')
      }
      if (params) generations.set(params, cred.generation)
      return cred.password
    }
  })
  // An idle client whose connection dies (a server restart) must not crash the process.
  pool.on('error', (err) => log(`idle connection lost: ${err.message}`))
  return { pool, generationOf: (client) => generations.get(client.connectionParameters) || '?' }
}

async function loginOnce ({ pool, generationOf }) {
  const client = await pool.connect()
  try {
    const { rows } = await client.query('SELECT current_user AS user')
    return { user: rows[0].user, generation: generationOf(client) }
  } finally {
    // Destroyed rather than returned, so that the next connect() logs in again (the demo's point).
    client.release(true)
  }
}

async function main () {
  if (!(interval > 0)) throw new Error(`INTERVAL must be a positive number of seconds, not ${process.env.INTERVAL}`)
  const db = await newPool()
  let stopping = false
  for (const signal of ['SIGTERM', 'SIGINT']) {
    process.on(signal, () => { stopping = true })
  }
  while (!stopping) {
    const started = Date.now()
    try {
      const { user, generation } = await loginOnce(db)
      log(`login ok user=${user} generation=${generation}`)
    } catch (err) {
      // node-postgres' and rdsiam's messages name the user and the path, never the password.
      const code = err instanceof pg.DatabaseError ? ` (SQLSTATE ${err.code})` : err.code ? ` (${err.code})` : ''
      log(`login failed: ${err.message}${code}`)
    }
    await new Promise((resolve) => setTimeout(resolve, Math.max(0, interval * 1000 - (Date.now() - started))))
  }
  await db.pool.end()
}

main().catch((err) => {
  console.error(`cannot start: ${err.message}`)
  process.exit(1)
})
