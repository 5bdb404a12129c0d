package system

import (
	"io"
	"os"
)

// TailFile returns at most the last n bytes of a file (a console log, for
// instance), or "" when it cannot be read. A log rotated into path+".1"
// contributes its end when path itself is shorter than n. It is for error
// messages, so it never fails.
func TailFile(path string, n int64) string {
	cur := tailBytes(path, n)
	if int64(len(cur)) < n {
		cur = append(tailBytes(path+RotatedSuffix, n-int64(len(cur))), cur...)
	}
	return string(cur)
}

func tailBytes(path string, n int64) []byte {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil
	}
	off := max(st.Size()-n, 0)
	b, err := io.ReadAll(io.NewSectionReader(f, off, st.Size()-off))
	if err != nil {
		return nil
	}
	return b
}
