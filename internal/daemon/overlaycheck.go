package daemon

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/bangerdev/banger/internal/system"
	"github.com/bangerdev/banger/internal/vmm"
)

// checkOverlay refuses a VM's qcow2 overlay whose header names anything
// but backing. The VM's QEMU (an unprivileged user, possibly taken over
// by its guest) can write the file, header included, and qemu-img runs
// as the daemon's user: a header naming another backing file
// (/etc/shadow) or an external data file would have qemu-img read that
// host file into a disk the guest reads next.
func checkOverlay(ctx context.Context, r system.Runner, overlay string, backing vmm.Layer) error {
	out, err := r.Run(ctx, "qemu-img", "info", "-U", "--output=json", "-f", "qcow2", overlay)
	if err != nil {
		return fmt.Errorf("inspect overlay: %w", err)
	}
	var info struct {
		Format         string `json:"format"`
		Backing        string `json:"backing-filename"`
		BackingFormat  string `json:"backing-filename-format"`
		FormatSpecific struct {
			Data map[string]any `json:"data"`
		} `json:"format-specific"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		return fmt.Errorf("inspect overlay: parse qemu-img info: %w", err)
	}
	switch _, dataFile := info.FormatSpecific.Data["data-file"]; {
	case info.Format != "qcow2":
		return fmt.Errorf("overlay %s is %q, not qcow2: refusing it (its VM may have rewritten it)", overlay, info.Format)
	case info.Backing != backing.Path || info.BackingFormat != backing.Format:
		return fmt.Errorf("overlay %s names backing file %q (%s), not %q (%s): refusing it (its VM may have rewritten it)",
			overlay, info.Backing, info.BackingFormat, backing.Path, backing.Format)
	case dataFile:
		return fmt.Errorf("overlay %s names an external data file %v: refusing it (its VM may have rewritten it)",
			overlay, info.FormatSpecific.Data["data-file"])
	}
	return nil
}

// checkVMOverlays runs checkOverlay on each of a VM's disks that is a
// qcow2 overlay, against the layer the daemon put under it.
func checkVMOverlays(ctx context.Context, r system.Runner, disks ...vmm.Disk) error {
	for _, d := range disks {
		if d.Format != "qcow2" {
			continue
		}
		if len(d.Backing) == 0 {
			return fmt.Errorf("overlay %s has no recorded backing", d.Path)
		}
		if err := checkOverlay(ctx, r, d.Path, d.Backing[0]); err != nil {
			return err
		}
	}
	return nil
}
