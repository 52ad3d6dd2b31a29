package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// publish writes one generation as kubelet's AtomicWriter does: a new timestamped directory, the
// ..data_tmp symlink renamed over ..data, the per-key symlinks, then the old directory removed.
func publish(dir string, values map[string]string) error {
	old, _ := os.Readlink(filepath.Join(dir, dataLink))
	gen, err := os.MkdirTemp(dir, time.Now().UTC().Format("..2006_01_02_15_04_05."))
	if err != nil {
		return err
	}
	for key, value := range values {
		if err := os.WriteFile(filepath.Join(gen, key), []byte(value), 0o440); err != nil {
			return err
		}
	}
	tmp := filepath.Join(dir, "..data_tmp")
	_ = os.Remove(tmp)
	if err := os.Symlink(filepath.Base(gen), tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, dataLink)); err != nil {
		return err
	}
	for key := range values {
		if err := os.Symlink(filepath.Join(dataLink, key), filepath.Join(dir, key)); err != nil && !errors.Is(err, fs.ErrExist) {
			return err
		}
	}
	if old != "" {
		return os.RemoveAll(filepath.Join(dir, old))
	}
	return nil
}

func mustPublish(t *testing.T, dir string, values map[string]string) {
	t.Helper()
	if err := publish(dir, values); err != nil {
		t.Fatal(err)
	}
}

// generation n: every key carries n, so a read that mixes two generations shows.
func generation(n int) map[string]string {
	return map[string]string{
		"username": fmt.Sprintf("user%d", n), "password": fmt.Sprintf("token%d", n),
		"host": fmt.Sprintf("db%d.example", n), "port": fmt.Sprint(5000 + n%1000), "dbname": fmt.Sprintf("db%d", n),
		"dsn": "unused", "expires-at": "2099-01-01T00:00:00Z",
	}
}

func TestReadMountNeverMixesGenerations(t *testing.T) {
	dir := t.TempDir()
	mustPublish(t, dir, generation(0))
	var stop atomic.Bool
	var written atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for n := 1; !stop.Load(); n++ {
			if err := publish(dir, generation(n)); err != nil {
				t.Error(err)
				return
			}
			written.Store(int64(n))
		}
	}()
	t.Cleanup(func() { stop.Store(true); wg.Wait() }) // before TempDir's cleanup (LIFO)
	reads := 0
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); reads++ {
		cred, err := ReadMount(dir)
		if err != nil {
			t.Fatalf("read %d: %v", reads, err)
		}
		n := strings.TrimPrefix(cred.Password, "token")
		if cred.Username != "user"+n || cred.DBName != "db"+n || cred.Host != "db"+n+".example" {
			t.Fatalf("mixed generations: %+v", cred)
		}
	}
	if written.Load() < 10 {
		t.Fatalf("only %d rotations during the reads", written.Load())
	}
	t.Logf("%d reads during %d rotations", reads, written.Load())
}

func TestReadMountErrorsNameThePathNotTheToken(t *testing.T) {
	dir := t.TempDir()
	values := generation(1)
	delete(values, "dbname")
	mustPublish(t, dir, values)
	_, err := ReadMount(dir)
	if err == nil || !strings.Contains(err.Error(), `lacks key "dbname"`) || strings.Contains(err.Error(), "token1") {
		t.Fatalf("got %v", err)
	}

	mustPublish(t, dir, map[string]string{"username": "u", "password": "token2", "host": "h", "port": "x", "dbname": "d"})
	if _, err := ReadMount(dir); err == nil || !strings.Contains(err.Error(), "port is not a port number") {
		t.Fatalf("got %v", err)
	}
}

func TestExpiredTokenIsExplained(t *testing.T) {
	dir := t.TempDir()
	values := generation(1)
	values["expires-at"] = "2026-01-01T00:00:00Z"
	mustPublish(t, dir, values)
	cred, err := ReadMount(dir)
	if err != nil {
		t.Fatal(err)
	}
	err = cred.CheckExpiry(time.Date(2026, 1, 1, 0, 10, 0, 0, time.UTC), dir)
	if err == nil || !strings.Contains(err.Error(), "expired 10m0s ago") || strings.Contains(err.Error(), "token1") {
		t.Fatalf("got %v", err)
	}
}

func TestPlainFilesAreReadWithAWarning(t *testing.T) {
	dir := t.TempDir()
	for key, value := range generation(3) {
		if err := os.WriteFile(filepath.Join(dir, key), []byte(value+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cred, err := ReadMount(dir)
	if err != nil || cred.Password != "token3" || cred.Generation != "plain" || cred.Port != 5003 {
		t.Fatalf("got %+v, %v", cred, err)
	}
}
