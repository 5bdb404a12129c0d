package cli

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/bangerdev/banger/api"
)

func newImageCmd(g *globals) *cobra.Command {
	img := &cobra.Command{Use: "image", Short: "Build and manage VM images"}
	var build api.BuildImageRequest
	var noWait bool
	var provisionPath string
	buildCmd := &cobra.Command{
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
			var built api.Image
			op, err := g.watch(cmd.Context(), ref.ID, &built)
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
	buildCmd.Flags().StringVar(&build.Name, "name", "", "image name (default debian-<suite>)")
	buildCmd.Flags().BoolVar(&build.Force, "force", false, "rebuild even when the inputs are unchanged")
	buildCmd.Flags().BoolVar(&build.Base, "base", false, "build the minimal image (no Node.js, coding agents or dev tools; for tests and benchmarks)")
	buildCmd.Flags().BoolVar(&noWait, "no-wait", false, "print the operation id and return at once")
	buildCmd.Flags().StringVar(&build.From, "from", "", "derive from this image: boot it, run --provision over SSH, keep the result")
	buildCmd.Flags().StringVar(&provisionPath, "provision", "", "script to run as root in the --from image (`-` reads stdin)")
	buildCmd.Flags().StringVar(&build.Egress, "egress", "", "network of the provisioning VM: all or none (default: config vm.egress)")
	buildCmd.Flags().StringVar(&build.Distro, "distro", "debian", "debian, or void (experimental: assembled from --rootfs-tar, --kernel, --initrd, --modules)")
	buildCmd.Flags().StringVar(&build.RootfsTar, "rootfs-tar", "", "Void rootfs tarball (gzip, xz or zstd)")
	buildCmd.Flags().StringVar(&build.Kernel, "kernel", "", "Void kernel (bzImage) matching --modules and --initrd")
	buildCmd.Flags().StringVar(&build.Initrd, "initrd", "", "Void initramfs of the same kernel")
	buildCmd.Flags().StringVar(&build.Modules, "modules", "", "the kernel's modules directory (named for its release)")

	list := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List images",
		Args:    args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			imgs, err := g.client().ListImages(cmd.Context())
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(imgs)
			}
			tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tDEFAULT\tSTATE\tDISTRO\tKERNEL\tSIZE\tFINGERPRINT\tUSED BY")
			for _, i := range imgs {
				def := ""
				if i.Default {
					def = "*"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%.1fGiB\t%.12s\t%d\n", i.Name, def, i.State, i.Distro, i.KernelVersion, float64(i.SizeBytes)/(1<<30), i.Fingerprint, len(i.UsedBy))
			}
			return tw.Flush()
		},
	}
	show := &cobra.Command{
		Use:   "show NAME",
		Short: "Show an image and its package manifest",
		Args:  args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			i, err := g.client().GetImage(cmd.Context(), a[0])
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(i)
			}
			fmt.Fprintf(g.stdout, "name:        %s\ndefault:     %t\nstate:       %s\nsuite:       %s\nkernel:      %s\nfingerprint: %s\ndir:         %s\nused by:     %v\n",
				i.Name, i.Default, i.State, i.Suite, i.KernelVersion, i.Fingerprint, i.Dir, i.UsedBy)
			if i.Distro != "" {
				fmt.Fprintf(g.stdout, "distro:      %s\n", i.Distro)
			}
			if i.From != "" {
				fmt.Fprintf(g.stdout, "derived from: %s\n", i.From)
			}
			switch {
			case i.VerifiedAt == nil:
				fmt.Fprintf(g.stdout, "verified:    never (`banger image verify %s`)\n", i.Name)
			case i.VerifyError != "":
				fmt.Fprintf(g.stdout, "verified:    FAILED at %s: %s\n", i.VerifiedAt.Local().Format(time.RFC3339), i.VerifyError)
			default:
				fmt.Fprintf(g.stdout, "verified:    ok at %s\n", i.VerifiedAt.Local().Format(time.RFC3339))
			}
			if len(i.Services) > 0 {
				fmt.Fprintf(g.stdout, "services:    %s\n", strings.Join(i.Services, ", "))
			}
			npm := make([]string, 0, len(i.NPM))
			for n, v := range i.NPM {
				npm = append(npm, n+"@"+v)
			}
			sort.Strings(npm)
			if len(npm) > 0 {
				fmt.Fprintf(g.stdout, "npm:         %s\n", strings.Join(npm, " "))
			}
			fmt.Fprintf(g.stdout, "packages:    %d\n", len(i.Packages))
			names := make([]string, 0, len(i.Packages))
			for n := range i.Packages {
				names = append(names, n)
			}
			sort.Strings(names)
			for _, n := range names {
				fmt.Fprintf(g.stdout, "  %s %s\n", n, i.Packages[n])
			}
			return nil
		},
	}
	del := &cobra.Command{
		Use:     "delete NAME",
		Aliases: []string{"rm"},
		Short:   "Delete an image (refused while a VM uses it)",
		Args:    args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			if err := g.client().DeleteImage(cmd.Context(), a[0]); err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "image %s deleted.\n", a[0])
			return nil
		},
	}
	export := &cobra.Command{
		Use:   "export NAME DIR",
		Short: "Copy an image into DIR (for `image import` elsewhere)",
		Args:  args(cobra.ExactArgs(2)),
		RunE: func(cmd *cobra.Command, a []string) error {
			dir, err := filepath.Abs(a[1])
			if err != nil {
				return err
			}
			if err := g.client().ExportImage(cmd.Context(), a[0], dir); err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "image %s exported to %s.\n", a[0], dir)
			return nil
		},
	}
	imp := &cobra.Command{
		Use:   "import DIR",
		Short: "Register an image written by `image export`",
		Args:  args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			dir, err := filepath.Abs(a[0])
			if err != nil {
				return err
			}
			i, err := g.client().ImportImage(cmd.Context(), dir)
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(i)
			}
			fmt.Fprintf(g.stdout, "image %s imported.\n", i.Name)
			return nil
		},
	}
	var verifyNoWait bool
	verify := &cobra.Command{
		Use:   "verify NAME",
		Short: "Boot an image once and check its agent, sshd, tools and services",
		Args:  args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			ref, err := g.client().VerifyImage(cmd.Context(), a[0])
			if err != nil {
				return err
			}
			if verifyNoWait {
				fmt.Fprintln(g.stdout, ref.ID)
				return nil
			}
			if !g.json {
				fmt.Fprintf(g.stderr, "verifying image %s (operation %s)\n", a[0], ref.ID)
			}
			var verified api.Image
			if _, err := g.watch(cmd.Context(), ref.ID, &verified); err != nil {
				return err
			}
			if g.json {
				return g.printJSON(verified)
			}
			fmt.Fprintf(g.stdout, "image %s verified.\n", a[0])
			return nil
		},
	}
	verify.Flags().BoolVar(&verifyNoWait, "no-wait", false, "print the operation id and return at once")
	promote := &cobra.Command{
		Use:   "promote NAME",
		Short: "Make a staged image managed and the default for new VMs",
		Args:  args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			i, err := g.client().PromoteImage(cmd.Context(), a[0])
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(i)
			}
			fmt.Fprintf(g.stdout, "image %s is managed and the default.\n", i.Name)
			return nil
		},
	}
	var reg api.RegisterImageRequest
	register := &cobra.Command{
		Use:   "register NAME --rootfs F --kernel K [--initrd I] [--modules DIR]",
		Short: "Register an image made elsewhere (staged unless it is the first)",
		Args:  args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			reg.Name = a[0]
			for _, p := range []*string{&reg.Rootfs, &reg.Kernel, &reg.Initrd, &reg.Modules} {
				if *p == "" {
					continue
				}
				abs, err := filepath.Abs(*p)
				if err != nil {
					return err
				}
				*p = abs
			}
			i, err := g.client().RegisterImage(cmd.Context(), reg)
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(i)
			}
			fmt.Fprintf(g.stdout, "image %s registered (%s, kernel %s).\n", i.Name, i.State, i.KernelVersion)
			return nil
		},
	}
	register.Flags().StringVar(&reg.Rootfs, "rootfs", "", "ext4 root filesystem image (required)")
	register.Flags().StringVar(&reg.Kernel, "kernel", "", "x86 bzImage kernel (required)")
	register.Flags().StringVar(&reg.Initrd, "initrd", "", "initramfs matching the kernel")
	register.Flags().StringVar(&reg.Modules, "modules", "", "the kernel's modules directory (named after its release); copied into the rootfs when it lacks them")
	_ = register.MarkFlagRequired("rootfs")
	_ = register.MarkFlagRequired("kernel")
	img.AddCommand(buildCmd, list, show, del, export, imp, verify, promote, register)
	return img
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
