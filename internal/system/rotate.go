package system

import (
	"fmt"
	"io"
	"os"
)

// RotatedSuffix names the previous generation of a rotated log
// (console.log.1 next to console.log).
const RotatedSuffix = ".1"

// RotatingWriter appends to Path and, before a write would take it past
// Max bytes, renames it to Path+".1" (replacing the older generation)
// and starts a new file. Disk use stays under 2*Max while the newest
// output is always kept: what a guest prints forever costs the host a
// bounded amount. It is not safe for concurrent use.
type RotatingWriter struct {
	Path string
	Max  int64
	f    *os.File
	size int64
}

func (w *RotatingWriter) open() error {
	f, err := os.OpenFile(w.Path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("open %s: %w", w.Path, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("stat %s: %w", w.Path, err)
	}
	w.f, w.size = f, st.Size()
	return nil
}

func (w *RotatingWriter) Write(p []byte) (int, error) {
	total := len(p)
	for len(p) > 0 {
		if w.f == nil {
			if err := w.open(); err != nil {
				return total - len(p), err
			}
		}
		room := w.Max - w.size
		if room <= 0 {
			if err := w.rotate(); err != nil {
				return total - len(p), err
			}
			continue
		}
		chunk := p[:min(int64(len(p)), room)]
		n, err := w.f.Write(chunk)
		w.size += int64(n)
		p = p[n:]
		if err != nil {
			return total - len(p), err
		}
	}
	return total, nil
}

func (w *RotatingWriter) rotate() error {
	w.f.Close()
	w.f = nil
	if err := os.Rename(w.Path, w.Path+RotatedSuffix); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("rotate %s: %w", w.Path, err)
	}
	return w.open()
}

// Close closes the current file.
func (w *RotatingWriter) Close() error {
	if w.f == nil {
		return nil
	}
	err := w.f.Close()
	w.f = nil
	return err
}

// CopyTruncate rotates a log that another process keeps open with
// O_APPEND (Firecracker's stdout): once path is larger than max, its last
// max bytes are copied to path+".1" and path is truncated, so the writer
// carries on at offset 0. Bytes written between the copy and the truncate
// are lost; that is the price of not owning the writer.
func CopyTruncate(path string, max int64) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		if os.IsNotExist(err) {
			return nil
		}
		return fmt.Errorf("open %s: %w", path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || st.Size() <= max {
		return err
	}
	tmp := path + RotatedSuffix + ".tmp"
	out, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("rotate %s: %w", path, err)
	}
	_, err = io.Copy(out, io.NewSectionReader(f, st.Size()-max, max))
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path+RotatedSuffix)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("rotate %s: %w", path, err)
	}
	if err := f.Truncate(0); err != nil {
		return fmt.Errorf("truncate %s: %w", path, err)
	}
	return nil
}

// CopyRotated writes the older generation of a rotated log (if any) and
// then the current one to w: the whole retained log, oldest first.
func CopyRotated(w io.Writer, path string) error {
	for _, p := range []string{path + RotatedSuffix, path} {
		f, err := os.Open(p)
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			return err
		}
		_, err = io.Copy(w, f)
		f.Close()
		if err != nil {
			return err
		}
	}
	return nil
}
