package agent

import (
	"bufio"
	"encoding/json"
	"io"
)

func bufioReader(r io.Reader) *bufio.Reader { return bufio.NewReader(r) }

func jsonDecode(r io.Reader, v any) error { return json.NewDecoder(r).Decode(v) }
