package agent

import (
	"errors"
	"net/http"
	"os"
	"path/filepath"

	"github.com/bangerdev/banger/internal/httpjson"
	"github.com/bangerdev/banger/internal/tarx"
)

// handleImport extracts a tar stream into an absolute guest directory.
// tarx confines every write to that directory, so a hostile or buggy
// stream cannot touch the rest of the guest.
func (s *Server) handleImport(w http.ResponseWriter, r *http.Request) {
	dir := r.URL.Query().Get("dir")
	if !filepath.IsAbs(dir) {
		httpjson.WriteStatusError(w, http.StatusBadRequest, "import needs an absolute ?dir=", "pass the guest directory to extract into")
		return
	}
	if r.URL.Query().Get("mkdir") == "1" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			httpjson.WriteStatusError(w, http.StatusInternalServerError, "create "+dir+": "+err.Error(), "")
			return
		}
	}
	st, err := tarx.Extract(r.Context(), r.Body, dir, 0)
	if err != nil {
		status := http.StatusInternalServerError
		if errors.Is(err, tarx.ErrUnsafePath) || errors.Is(err, tarx.ErrUnsupported) || errors.Is(err, tarx.ErrTooLarge) {
			status = http.StatusBadRequest
		}
		s.log.Warn("import failed", "dir", dir, "err", err)
		httpjson.WriteStatusError(w, status, "import into "+dir+": "+err.Error(), "entries must be regular files, directories or symlinks inside the target")
		return
	}
	httpjson.WriteJSON(w, http.StatusOK, st)
}
