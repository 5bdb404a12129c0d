package cli

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/bangerdev/banger/api"
)

func newImageBuildCmd(g *globals) *cobra.Command {
	var build api.BuildImageRequest
	var noWait bool
	var provisionPath string
	cmd := &cobra.Command{
		Use:   "build",
		Short: "Build the Debian image with Node.js and the coding agents (a no-op when its inputs are unchanged)",
		Args:  args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			// The daemon reads the Void parts itself: make them absolute.
			for _, p := range []*string{&build.RootfsTar, &build.Kernel, &build.Initrd, &build.Modules} {
				if *p != "" {
					if abs, err := filepath.Abs(*p); err == nil {
						*p = abs
					}
				}
			}
			if provisionPath != "" {
				script, err := readProvisionScript(provisionPath)
				if err != nil {
					return err
				}
				build.Provision = script
			}
			c := g.client()
			ref, err := c.BuildImage(cmd.Context(), build)
			if err != nil {
				return err
			}
			if noWait {
				if g.json {
					return g.printJSON(ref)
				}
				fmt.Fprintln(g.stdout, ref.ID)
				return nil
			}
			if !g.json {
				fmt.Fprintf(g.stderr, "building image (operation %s)\n", ref.ID)
			}
			op, built, err := watchFor(cmd.Context(), g, ref.ID, g.client().GetImage)
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(built)
			}
			if built.State == api.ImageStaged {
				fmt.Fprintf(g.stdout, "image %s is built and staged; `banger image verify %s` then `banger image promote %s` make it the default.\n", op.Target, op.Target, op.Target)
				return nil
			}
			fmt.Fprintf(g.stdout, "image %s is ready.\n", op.Target)
			return nil
		},
	}
	cmd.Flags().StringVar(&build.Name, "name", "", "image name (default debian-<suite>)")
	cmd.Flags().BoolVar(&build.Force, "force", false, "rebuild even when the inputs are unchanged")
	cmd.Flags().BoolVar(&build.Base, "base", false, "build the minimal image (no Node.js, coding agents or dev tools; for tests and benchmarks)")
	cmd.Flags().BoolVar(&noWait, "no-wait", false, "print the operation id and return at once")
	cmd.Flags().StringVar(&build.From, "from", "", "derive from this image: boot it, run --provision over SSH, keep the result")
	cmd.Flags().StringVar(&provisionPath, "provision", "", "script to run as root in the --from image (`-` reads stdin)")
	cmd.Flags().StringVar(&build.Egress, "egress", "", "network of the provisioning VM: all or none (default: config vm.egress)")
	cmd.Flags().StringVar(&build.Distro, "distro", "debian", "debian, or void (experimental: assembled from --rootfs-tar, --kernel, --initrd, --modules)")
	cmd.Flags().StringVar(&build.RootfsTar, "rootfs-tar", "", "Void rootfs tarball (gzip, xz or zstd)")
	cmd.Flags().StringVar(&build.Kernel, "kernel", "", "Void kernel (bzImage) matching --modules and --initrd")
	cmd.Flags().StringVar(&build.Initrd, "initrd", "", "Void initramfs of the same kernel")
	cmd.Flags().StringVar(&build.Modules, "modules", "", "the kernel's modules directory (named for its release)")
	return cmd
}

// readProvisionScript reads a provisioning script from a file or stdin,
// refusing what cannot be a script before anything boots.
func readProvisionScript(path string) (string, error) {
	var data []byte
	var err error
	if path == "-" {
		data, err = io.ReadAll(io.LimitReader(os.Stdin, 1<<20))
	} else {
		data, err = os.ReadFile(path)
	}
	if err != nil {
		return "", fmt.Errorf("read provisioning script: %w", err)
	}
	if len(bytes.TrimSpace(data)) == 0 {
		return "", &api.Error{Code: api.CodeInvalid, Message: fmt.Sprintf("provisioning script %s is empty", path), Hint: "write the commands that set the image up, e.g. `apt-get install -y htop`"}
	}
	if bytes.IndexByte(data, 0) >= 0 {
		return "", &api.Error{Code: api.CodeInvalid, Message: fmt.Sprintf("provisioning script %s is not text", path), Hint: "pass a shell script (a #! line picks another interpreter)"}
	}
	return string(data), nil
}
