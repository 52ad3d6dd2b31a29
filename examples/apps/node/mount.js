'use strict'
// Read one generation of the rdsiam Secret mounted as a volume.
//
// Kubelet writes a Secret volume as DIR/..TIMESTAMP/KEY files, DIR/..data -> ..TIMESTAMP, and
// DIR/KEY -> ..data/KEY. A rotation writes a new timestamped directory, renames a symlink over
// ..data and only then deletes the old directory; a directory's files never change once ..data
// names it. Reading every key from the directory ..data resolved to therefore yields one
// generation, or fails with ENOENT when kubelet deleted it meanwhile: then resolve again.

const fs = require('fs/promises')
const path = require('path')

const DATA_LINK = '..data'
const MAX_ATTEMPTS = 50 // re-resolutions of ..data while kubelet keeps swapping it under a read
const KEYS = ['username', 'password', 'host', 'port', 'dbname']
const OPTIONAL_KEYS = ['expires-at']

let warnedPlain = false

class MountError extends Error {}

// {generation, username, password, host, port, dbname, expiresAt (Date or null)}. Never log password.
async function readMount (dir) {
  let target
  try {
    target = await fs.readlink(path.join(dir, DATA_LINK))
  } catch (err) {
    if (err.code === 'EACCES') throw unreadable(dir, err)
    // No ..data symlink: a subPath mount or copied files. Readable, but never updated.
    if (!warnedPlain) {
      warnedPlain = true
      console.warn(`warning: ${dir} has no ${DATA_LINK} symlink, so it is not a Secret volume that kubelet ` +
        'updates (a subPath mount or copied files); the token will not follow rotations and logins will fail ' +
        'within 15 minutes. Mount the whole Secret as a volume directory, without subPath.')
    }
    return readGeneration(dir, dir, 'plain')
  }
  for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
    try {
      return await readGeneration(dir, path.join(dir, target), target)
    } catch (err) {
      if (err.code !== 'ENOENT') throw err
      let newer = null
      try {
        newer = await fs.readlink(path.join(dir, DATA_LINK))
      } catch {}
      // Not a swap in progress: kubelet removes a directory only after moving ..data off it.
      if (newer === null || newer === target) throw err
      target = newer
    }
  }
  throw new MountError(`${dir} changed ${MAX_ATTEMPTS} times while being read; giving up`)
}

async function readGeneration (mount, dir, generation) {
  const values = {}
  for (const key of [...KEYS, ...OPTIONAL_KEYS]) {
    try {
      // `kubectl create secret --from-file` keeps a trailing newline; tokens never end in one.
      values[key] = (await fs.readFile(path.join(dir, key), 'utf8')).replace(/[\r\n]+$/, '')
    } catch (err) {
      if (err.code === 'ENOENT' && OPTIONAL_KEYS.includes(key)) continue
      if (err.code === 'EACCES') throw unreadable(mount, err)
      if (err.code === 'ENOENT') {
        // code ENOENT lets readMount tell a vanished generation apart; the message names the key only.
        throw Object.assign(new MountError(`${mount} lacks key "${key}" (is the Secret written by rdsiam, and ` +
          "does the volume's items: select every key?)"), { code: 'ENOENT' })
      }
      throw err
    }
  }
  const port = Number(values.port)
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    throw new MountError(`${mount}/port is not a port number: ${JSON.stringify(values.port.slice(0, 20))}`)
  }
  let expiresAt = null
  if (values['expires-at'] !== undefined) {
    expiresAt = new Date(values['expires-at'])
    if (Number.isNaN(expiresAt.getTime())) {
      throw new MountError(`${mount}/expires-at is not an RFC 3339 instant: ` +
        JSON.stringify(values['expires-at'].slice(0, 40)))
    }
  }
  return {
    generation,
    username: values.username,
    password: values.password,
    host: values.host,
    port,
    dbname: values.dbname,
    expiresAt
  }
}

function unreadable (mount, err) {
  const uid = process.getuid ? process.getuid() : '?'
  const gid = process.getgid ? process.getgid() : '?'
  return new MountError(`${err.message}: this process (uid ${uid}, gid ${gid}) may not read the mounted Secret ` +
    `${mount}: check the volume's defaultMode (0400 lets only the files' owner, root, read them; use 0440 with ` +
    "the pod's securityContext.fsGroup) and the pod's runAsUser and fsGroup")
}

// Explains a token past its expires-at instead of letting the server say only "PAM authentication failed".
function checkExpiry (cred, mount, now = new Date()) {
  if (cred.expiresAt === null || now < cred.expiresAt) return
  const ago = Math.round((now - cred.expiresAt) / 1000)
  const h = Math.floor(ago / 3600)
  const m = Math.floor(ago / 60) % 60
  const human = (h ? `${h}h${m}m` : m ? `${m}m` : '') + `${ago % 60}s` // as Go prints a duration
  throw new MountError(`the token in ${mount} expired ${human} ago (expires-at ${cred.expiresAt.toISOString()}): ` +
    "the Secret is not being refreshed; check the RdsIamCredential's Ready condition (kubectl describe " +
    'rdsiamcredential NAME) and that the pod mounts its Secret as a volume at this path')
}

module.exports = { readMount, checkExpiry, MountError }
