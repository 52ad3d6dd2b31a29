'use strict'
// node --test: readMount against a mount rewritten the way kubelet's AtomicWriter does it.
const assert = require('assert')
const fs = require('fs')
const os = require('os')
const path = require('path')
const test = require('node:test')
const { Worker, isMainThread, workerData } = require('worker_threads')
const { readMount, checkExpiry } = require('./mount')

// One generation as kubelet writes it: a new timestamped directory, the ..data_tmp symlink renamed
// over ..data, the per-key symlinks, then the old directory removed.
function publish (dir, values) {
  let old = null
  try { old = fs.readlinkSync(path.join(dir, '..data')) } catch {}
  const stamp = new Date().toISOString().replace(/[-T:]/g, '_').replace(/\..*/, '')
  const gen = fs.mkdtempSync(path.join(dir, `..${stamp}.`))
  for (const [key, value] of Object.entries(values)) fs.writeFileSync(path.join(gen, key), value, { mode: 0o440 })
  const tmp = path.join(dir, '..data_tmp')
  fs.rmSync(tmp, { force: true })
  fs.symlinkSync(path.basename(gen), tmp)
  fs.renameSync(tmp, path.join(dir, '..data'))
  for (const key of Object.keys(values)) {
    if (!fs.existsSync(path.join(dir, key))) fs.symlinkSync(path.join('..data', key), path.join(dir, key))
  }
  if (old) fs.rmSync(path.join(dir, old), { recursive: true, force: true })
}

// Generation n: every key carries n, so a read that mixes two generations shows.
function generation (n) {
  return {
    username: `user${n}`, password: `token${n}`, host: `db${n}.example`, port: String(5000 + n % 1000),
    dbname: `db${n}`, dsn: 'unused', 'expires-at': '2099-01-01T00:00:00Z'
  }
}

if (!isMainThread) { // the rotating writer, in a thread of its own so that it interleaves with the reads
  const stop = new Int32Array(workerData.stop)
  for (let n = 1; Atomics.load(stop, 0) === 0; n++) {
    publish(workerData.dir, generation(n))
    Atomics.store(stop, 1, n)
    // A rotation every few milliseconds (kubelet: one every few minutes). Without a pause, rotations
    // come quicker than an async read of six files, and reads would keep starting over.
    Atomics.wait(stop, 0, 0, 3)
  }
  return
}

function tempMount () {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'rdsiam-mount-'))
}

test('a read during rotations never mixes generations', async (t) => {
  const dir = tempMount()
  publish(dir, generation(0))
  const stop = new SharedArrayBuffer(8)
  const writer = new Worker(__filename, { workerData: { dir, stop } })
  const flags = new Int32Array(stop)
  let reads = 0
  try {
    for (const deadline = Date.now() + 1000; Date.now() < deadline; reads++) {
      const cred = await readMount(dir)
      const n = cred.password.replace('token', '')
      assert.deepStrictEqual([cred.username, cred.host, cred.dbname], [`user${n}`, `db${n}.example`, `db${n}`])
    }
  } finally {
    Atomics.store(flags, 0, 1)
    await new Promise((resolve) => writer.once('exit', resolve))
    fs.rmSync(dir, { recursive: true, force: true })
  }
  const rotations = Atomics.load(flags, 1)
  assert.ok(rotations >= 10, `only ${rotations} rotations during ${reads} reads`)
  t.diagnostic(`${reads} reads during ${rotations} rotations`)
})

test('errors name the path and the key, never the token', async () => {
  const dir = tempMount()
  const values = generation(1)
  delete values.dbname
  publish(dir, values)
  await assert.rejects(readMount(dir), (err) => /lacks key "dbname"/.test(err.message) && !/token1/.test(err.message))
  publish(dir, { username: 'u', password: 'token2', host: 'h', port: 'x', dbname: 'd' })
  await assert.rejects(readMount(dir), /port is not a port number/)
  fs.rmSync(dir, { recursive: true, force: true })
})

test('an expired token is explained', async () => {
  const dir = tempMount()
  publish(dir, { ...generation(1), 'expires-at': '2026-01-01T00:00:00Z' })
  const cred = await readMount(dir)
  assert.throws(() => checkExpiry(cred, dir, new Date('2026-01-01T00:10:00Z')),
    (err) => /expired 10m0s ago/.test(err.message) && !/token1/.test(err.message))
  fs.rmSync(dir, { recursive: true, force: true })
})

test('plain files (subPath, copies) are read, with a warning', async () => {
  const dir = tempMount()
  for (const [key, value] of Object.entries(generation(3))) fs.writeFileSync(path.join(dir, key), value + '\n')
  const cred = await readMount(dir)
  assert.deepStrictEqual([cred.password, cred.generation, cred.port], ['token3', 'plain', 5003])
  fs.rmSync(dir, { recursive: true, force: true })
})
