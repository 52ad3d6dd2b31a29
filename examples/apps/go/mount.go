package main

import (
	"errors"
	"fmt"
	"io/fs"
	"log"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Kubelet writes a Secret volume as DIR/..TIMESTAMP/KEY files, DIR/..data -> ..TIMESTAMP, and
// DIR/KEY -> ..data/KEY. A rotation writes a new timestamped directory, renames a symlink over
// ..data and only then deletes the old directory; a directory's files never change once ..data
// names it. Reading every key from the directory ..data resolved to therefore yields one
// generation, or fails with "not found" when kubelet deleted it meanwhile: then resolve again.
const dataLink = "..data"

// maxAttempts bounds re-resolutions of ..data while kubelet keeps swapping it under a read.
const maxAttempts = 50

// Credential is every key of one generation of the mounted rdsiam Secret. Never log Password.
type Credential struct {
	Generation string // ..data's target, e.g. ..2026_05_01_12_00_00.123456789
	Username   string
	Password   string
	Host       string
	Port       uint16
	DBName     string
	ExpiresAt  time.Time // zero when the Secret has no expires-at key
}

var plainWarning sync.Once

// ReadMount reads one generation of the Secret volume mounted at dir.
func ReadMount(dir string) (Credential, error) {
	target, err := os.Readlink(filepath.Join(dir, dataLink))
	if err != nil {
		if errors.Is(err, fs.ErrPermission) {
			return Credential{}, unreadable(dir, err)
		}
		// No ..data symlink: a subPath mount or copied files. Readable, but never updated.
		plainWarning.Do(func() {
			log.Printf("warning: %s has no %s symlink, so it is not a Secret volume that kubelet updates "+
				"(a subPath mount or copied files); the token will not follow rotations and logins will fail "+
				"within 15 minutes. Mount the whole Secret as a volume directory, without subPath.", dir, dataLink)
		})
		return readGeneration(dir, dir, "plain")
	}
	for range maxAttempts {
		cred, err := readGeneration(dir, filepath.Join(dir, target), target)
		if !errors.Is(err, fs.ErrNotExist) {
			return cred, err
		}
		newer, lerr := os.Readlink(filepath.Join(dir, dataLink))
		if lerr != nil || newer == target {
			// Not a swap in progress: kubelet removes a directory only after moving ..data off it.
			return Credential{}, err
		}
		target = newer
	}
	return Credential{}, fmt.Errorf("%s changed %d times while being read; giving up", dir, maxAttempts)
}

func readGeneration(mount, dir, generation string) (Credential, error) {
	values := make(map[string]string, 6)
	for _, key := range []string{"username", "password", "host", "port", "dbname", "expires-at"} {
		data, err := os.ReadFile(filepath.Join(dir, key))
		switch {
		case err == nil:
			// `kubectl create secret --from-file` keeps a trailing newline; tokens never end in one.
			values[key] = strings.TrimRight(string(data), "\r\n")
		case key == "expires-at" && errors.Is(err, fs.ErrNotExist):
			// optional
		case errors.Is(err, fs.ErrPermission):
			return Credential{}, unreadable(mount, err)
		case errors.Is(err, fs.ErrNotExist):
			// %w keeps fs.ErrNotExist visible to ReadMount's retry; the message names the key only.
			return Credential{}, fmt.Errorf("%s lacks key %q (is the Secret written by rdsiam, and does the "+
				"volume's items: select every key?): %w", mount, key, fs.ErrNotExist)
		default:
			return Credential{}, fmt.Errorf("reading %s/%s: %w", mount, key, err)
		}
	}
	port, err := strconv.ParseUint(values["port"], 10, 16)
	if err != nil {
		return Credential{}, fmt.Errorf("%s/port is not a port number: %.20q", mount, values["port"])
	}
	cred := Credential{
		Generation: generation,
		Username:   values["username"],
		Password:   values["password"],
		Host:       values["host"],
		Port:       uint16(port),
		DBName:     values["dbname"],
	}
	if s, ok := values["expires-at"]; ok {
		if cred.ExpiresAt, err = time.Parse(time.RFC3339, s); err != nil {
			return Credential{}, fmt.Errorf("%s/expires-at is not an RFC 3339 instant: %.40q", mount, s)
		}
	}
	return cred, nil
}

func unreadable(mount string, err error) error {
	return fmt.Errorf("%w: this process (uid %d, gid %d) may not read the mounted Secret %s: check the volume's "+
		"defaultMode (0400 lets only the files' owner, root, read them; use 0440 with the pod's "+
		"securityContext.fsGroup) and the pod's runAsUser and fsGroup", err, os.Geteuid(), os.Getegid(), mount)
}

// CheckExpiry explains a token that is past its expires-at instead of letting the server say only
// "PAM authentication failed".
func (c Credential) CheckExpiry(now time.Time, mount string) error {
	if c.ExpiresAt.IsZero() || now.Before(c.ExpiresAt) {
		return nil
	}
	return fmt.Errorf("the token in %s expired %s ago (expires-at %s): the Secret is not being refreshed; check "+
		"the RdsIamCredential's Ready condition (kubectl describe rdsiamcredential NAME) and that the pod mounts "+
		"its Secret as a volume at this path", mount, now.Sub(c.ExpiresAt).Round(time.Second),
		c.ExpiresAt.UTC().Format(time.RFC3339))
}
