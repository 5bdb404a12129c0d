package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/term"

	"github.com/bangerdev/banger/api"
	"github.com/bangerdev/banger/internal/mux"
	"github.com/bangerdev/banger/internal/sshkeys"
)

func newVMCmd(g *globals) *cobra.Command {
	vm := &cobra.Command{Use: "vm", Short: "Create, run commands in, and remove VMs"}
	vm.AddCommand(newVMCreateCmd(g), newVMListCmd(g), newVMShowCmd(g),
		newVMLifecycleCmd(g, "start", "Boot a stopped VM"),
		newVMStopCmd(g),
		newVMLifecycleCmd(g, "restart", "Stop and start a VM"),
		newVMDeleteCmd(g), newVMExecCmd(g), newVMSSHCmd(g), newVMHealthCmd(g), newVMLogsCmd(g),
		newVMRunCmd(g), newVMWorkspaceCmd(g), newVMSessionCmd(g), newVMOpencodePasswordCmd(g))
	return vm
}

type createOptions struct {
	req    api.CreateVMRequest
	noWait bool
}

func newVMCreateCmd(g *globals) *cobra.Command {
	var o createOptions
	cmd := &cobra.Command{
		Use:   "create [NAME]",
		Short: "Create and boot a VM (prints its stages live)",
		Args:  args(cobra.MaximumNArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			if len(a) == 1 {
				o.req.Name = a[0]
			}
			return g.createVM(cmd.Context(), o)
		},
	}
	addCreateFlags(cmd.Flags(), &o.req)
	cmd.Flags().BoolVar(&o.noWait, "no-wait", false, "print the operation id and return at once")
	return cmd
}

// addCreateFlags are the VM shape flags `vm create` and `vm run` share.
func addCreateFlags(f *pflag.FlagSet, req *api.CreateVMRequest) {
	f.StringVar(&req.Image, "image", "", "image name (default: the default image)")
	f.IntVar(&req.CPUs, "cpus", 0, "vCPUs (default 2)")
	f.IntVar(&req.MemoryMiB, "memory", 0, "memory in MiB (default 1024)")
	f.IntVar(&req.DiskGiB, "disk", 0, "work disk (/root) size in GiB (default 4)")
	f.StringVar(&req.Egress, "egress", "", "guest network egress: all or none (default all)")
	f.StringVar(&req.VMM, "vmm", "", "virtual machine monitor: qemu or firecracker (default: [vm] vmm in the config; auto picks Firecracker when it and KVM work)")
	f.BoolVar(&req.Jailer, "jailer", false, "run Firecracker under its jailer (chroot, own uid, cgroup)")
	f.StringVar(&req.Net, "net", "", "network mode: user (QEMU user networking, forwards on 127.0.0.1) or tap (own address on banger's bridge, NAT; needs root) (default: config vm.net, else user)")
	f.BoolVar(&req.NoWaitServices, "no-wait-services", false, "do not wait for the image's services (opencode on :4096) once the agent answers")
}

func (g *globals) createVM(ctx context.Context, o createOptions) error {
	c := g.client()
	ref, err := c.CreateVM(ctx, o.req)
	if err != nil {
		return err
	}
	if o.noWait {
		if g.json {
			return g.printJSON(ref)
		}
		fmt.Fprintln(g.stdout, ref.ID)
		return nil
	}
	if !g.json {
		fmt.Fprintf(g.stderr, "creating VM (operation %s)\n", ref.ID)
	}
	op, err := g.watch(ctx, ref.ID, nil)
	if err != nil {
		return err
	}
	var vm api.VM
	if op.DecodeResult(&vm) != nil || vm.Name == "" {
		// The stream ended before the result (the daemon restarted):
		// the record says what the VM is now.
		if vm, err = c.GetVM(ctx, op.Target); err != nil {
			return err
		}
	}
	if g.json {
		return g.printJSON(vm)
	}
	fmt.Fprintf(g.stdout, "VM %s is running.\n", vm.Name)
	fmt.Fprintf(g.stdout, "  banger vm exec %s -- uname -a\n  banger vm ssh %s\n  banger vm stop %s\n  banger vm delete %s\n", vm.Name, vm.Name, vm.Name, vm.Name)
	return nil
}

func newVMListCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List VMs",
		Args:    args(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			vms, err := g.client().ListVMs(cmd.Context())
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(vms)
			}
			tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tSTATE\tIMAGE\tVMM\tCPUS\tMEMORY\tSSH\tACCEL\tAGE")
			for _, v := range vms {
				ssh := "-"
				switch {
				case v.Address != "":
					ssh = v.Address + ":22"
				case v.SSHPort != 0:
					ssh = fmt.Sprintf("127.0.0.1:%d", v.SSHPort)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%dMiB\t%s\t%s\t%s\n", v.Name, v.State, v.Image, v.VMM, v.CPUs, v.MemoryBytes>>20, ssh, v.Accel, age(v.CreatedAt))
			}
			return tw.Flush()
		},
	}
}

func age(t time.Time) string {
	d := time.Since(t)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

func newVMShowCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "show NAME",
		Short: "Show one VM",
		Args:  args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			vm, err := g.client().GetVM(cmd.Context(), a[0])
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(vm)
			}
			g.printVM(vm)
			return nil
		},
	}
}

// newVMOpencodePasswordCmd prints the VM's opencode password alone, for
// `OPENCODE_SERVER_PASSWORD=$(banger vm opencode-password NAME)`.
func newVMOpencodePasswordCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "opencode-password NAME",
		Short: "Print the password of the VM's opencode server (for opencode attach)",
		Args:  args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			vm, err := g.client().GetVM(cmd.Context(), a[0])
			if err != nil {
				return err
			}
			pw, err := opencodePassword(vm)
			if err != nil {
				return err
			}
			fmt.Fprintln(g.stdout, pw)
			return nil
		},
	}
}

func opencodePassword(vm api.VM) (string, error) {
	if vm.Opencode == nil {
		return "", api.Errorf(api.CodeNotFound, "VMs of an agent image serve opencode (see `banger image list`)", "VM %s serves no opencode", vm.Name)
	}
	if vm.State != api.VMRunning {
		// Its forwarded port is free while it is not running: whoever
		// listens there would get the password from `opencode attach`.
		return "", api.Errorf(api.CodeConflict, fmt.Sprintf("start it first: `banger vm start %s`", vm.Name),
			"VM %s is not running (%s); its opencode password is given out only while it runs", vm.Name, vm.State)
	}
	if vm.Opencode.Password == "" {
		return "", api.Errorf(api.CodeUnavailable, fmt.Sprintf("restart it with `banger vm restart %s`: every boot gives opencode the VM's password", vm.Name),
			"VM %s has not booted since banger gave opencode a password", vm.Name)
	}
	return vm.Opencode.Password, nil
}

func (g *globals) printVM(vm api.VM) {
	tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "name:\t%s\nid:\t%s\nstate:\t%s\nimage:\t%s\nvmm:\t%s (%s)\ncpus:\t%d\nmemory:\t%d MiB\nwork disk:\t%d GiB\negress:\t%s\n",
		vm.Name, vm.ID, vm.State, vm.Image, vm.VMM, vm.Accel, vm.CPUs, vm.MemoryBytes>>20, vm.WorkDiskBytes>>30, vm.Egress)
	if vm.Net != "" {
		fmt.Fprintf(tw, "net:\t%s\n", vm.Net)
	}
	if vm.Address != "" {
		fmt.Fprintf(tw, "address:\t%s (ssh %s:22)\n", vm.Address, vm.Address)
	}
	for _, p := range vm.Ports {
		fmt.Fprintf(tw, "port:\t127.0.0.1:%d -> guest :%d\n", p.HostPort, p.GuestPort)
	}
	if oc := vm.Opencode; oc != nil {
		fmt.Fprintf(tw, "opencode:\t%s (user %s, password from `banger vm opencode-password %s`)\n", oc.URL, oc.Username, vm.Name)
		if vm.State == api.VMRunning {
			fmt.Fprintf(tw, "attach:\t%s\n", opencodeAttachCommand(vm))
		} else {
			fmt.Fprintf(tw, "attach:\tnot running; start it first (`banger vm start %s`)\n", vm.Name)
		}
	}
	fmt.Fprintf(tw, "dir:\t%s\ncreated:\t%s\n", vm.Dir, vm.CreatedAt.Local().Format(time.RFC3339))
	if vm.LastError != "" {
		fmt.Fprintf(tw, "last error:\t%s\n", vm.LastError)
	}
	if vm.WorkSeedFingerprint != "" {
		fmt.Fprintf(tw, "work seed:\t%.12s", vm.WorkSeedFingerprint)
		if vm.ImageWorkSeedFingerprint != "" {
			fmt.Fprintf(tw, " (the image's seed has changed since: now %.12s; new VMs get the new /root skeleton)", vm.ImageWorkSeedFingerprint)
		}
		fmt.Fprintln(tw)
	}
	if len(vm.AuthSynced) > 0 {
		fmt.Fprintf(tw, "auth synced:\t%s\n", strings.Join(vm.AuthSynced, ", "))
	} else {
		fmt.Fprintf(tw, "auth synced:\tnone\n")
	}
	if w := vm.Workspace; w != nil {
		fmt.Fprintf(tw, "workspace:\t%s -> %s (%s, %s at %.12s, %d files)\n", w.Source, w.Dir, w.Mode, branchLabel(w.Branch), w.Head, w.Files)
	}
	tw.Flush()
}

func newVMLifecycleCmd(g *globals, verb, short string) *cobra.Command {
	var startReq api.StartVMRequest
	cmd := &cobra.Command{
		Use:   verb + " NAME",
		Short: short,
		Args:  args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			c := g.client()
			var vm api.VM
			var err error
			if verb == "start" {
				vm, err = c.StartVMWith(cmd.Context(), a[0], startReq)
			} else {
				vm, err = c.RestartVM(cmd.Context(), a[0])
			}
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(vm)
			}
			fmt.Fprintf(g.stdout, "VM %s is %s.\n", vm.Name, vm.State)
			return nil
		},
	}
	if verb == "start" {
		cmd.Flags().IntVar(&startReq.DiskGiB, "disk", 0, "grow the work disk (/root) to this many GiB first (shrinking is refused)")
	}
	return cmd
}

func newVMStopCmd(g *globals) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "stop NAME",
		Short: "Power a VM off (its disks are kept)",
		Args:  args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			vm, err := g.client().StopVM(cmd.Context(), a[0], force)
			if err != nil {
				return err
			}
			if g.json {
				return g.printJSON(vm)
			}
			fmt.Fprintf(g.stdout, "VM %s is %s.\n", vm.Name, vm.State)
			return nil
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "kill the VM at once instead of a clean poweroff")
	return cmd
}

func newVMDeleteCmd(g *globals) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:     "delete NAME",
		Aliases: []string{"rm"},
		Short:   "Stop a VM if needed and remove it with its disks",
		Args:    args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			if err := g.client().DeleteVM(cmd.Context(), a[0], force); err != nil {
				return err
			}
			if g.json {
				return g.printJSON(map[string]any{"name": a[0], "deleted": true})
			}
			fmt.Fprintf(g.stdout, "VM %s deleted.\n", a[0])
			return nil
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "kill the VM instead of a clean poweroff")
	return cmd
}

func newVMHealthCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "health NAME",
		Short: "Check a VM's VMM process and guest agent",
		Args:  args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			h, err := g.client().Health(cmd.Context(), a[0])
			if err != nil {
				return err
			}
			if g.json {
				if err := g.printJSON(h); err != nil {
					return err
				}
			} else {
				fmt.Fprintf(g.stdout, "vm:\t%s (%s)\nvmm:\t%s alive=%t\n", h.VM, h.State, h.VMM, h.VMMAlive)
				if h.Agent != nil {
					fmt.Fprintf(g.stdout, "agent:\tok version=%s boot_id=%s uptime=%.0fs\n", h.Agent.Version, h.Agent.BootID, h.Agent.UptimeSeconds)
				} else {
					fmt.Fprintf(g.stdout, "agent:\tnot answering: %s\n", h.AgentErr)
				}
			}
			if h.Agent == nil {
				return &exitError{code: ExitError}
			}
			return nil
		},
	}
}

func newVMLogsCmd(g *globals) *cobra.Command {
	var follow bool
	cmd := &cobra.Command{
		Use:   "logs NAME",
		Short: "Print a VM's serial console log",
		Args:  args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			return g.client().Logs(cmd.Context(), a[0], follow, g.stdout)
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing as the console writes")
	return cmd
}

type execOptions struct {
	name        string
	argv        []string
	interactive bool
	tty         bool
	dir         string
}

func newVMExecCmd(g *globals) *cobra.Command {
	var o execOptions
	cmd := &cobra.Command{
		Use:   "exec [-i] [-t] NAME -- CMD [ARGS...]",
		Short: "Run a command in a VM; exits with its status",
		Args: args(func(cmd *cobra.Command, a []string) error {
			if len(a) < 2 {
				return errors.New("usage: banger vm exec [-i] [-t] NAME -- CMD [ARGS...]")
			}
			return nil
		}),
		RunE: func(cmd *cobra.Command, a []string) error {
			o.name, o.argv = a[0], stripDashes(a[1:])
			if len(o.argv) == 0 {
				return &usageError{errors.New("usage: banger vm exec [-i] [-t] NAME -- CMD [ARGS...]")}
			}
			code, err := g.exec(cmd.Context(), o)
			if err != nil {
				return &exitError{code: ExitBanger, err: err}
			}
			return &exitError{code: code}
		},
	}
	cmd.Flags().SetInterspersed(false)
	cmd.Flags().BoolVarP(&o.interactive, "interactive", "i", false, "pass stdin even when it is a terminal")
	cmd.Flags().BoolVarP(&o.tty, "tty", "t", false, "give the command a terminal (PTY)")
	cmd.Flags().StringVarP(&o.dir, "workdir", "w", "", "guest working directory (default /root)")
	return cmd
}

// exec runs a guest command with local stdio and returns its exit code.
// Stdin goes along when it is not a terminal, or with -i.
func (g *globals) exec(ctx context.Context, o execOptions) (int, error) {
	stdinFile, _ := g.stdin.(*os.File)
	stdinIsTTY := stdinFile != nil && term.IsTerminal(int(stdinFile.Fd()))
	passStdin := o.interactive || !stdinIsTTY
	req := api.ExecRequest{Argv: o.argv, TTY: o.tty, Stdin: passStdin, Dir: o.dir}
	if o.tty {
		if v := os.Getenv("TERM"); v != "" {
			req.Env = map[string]string{"TERM": v}
		}
		if stdinIsTTY {
			if w, h, err := term.GetSize(int(stdinFile.Fd())); err == nil {
				req.Cols, req.Rows = uint16(w), uint16(h)
			}
		}
	}
	conn, err := g.client().Exec(ctx, o.name, req)
	if err != nil {
		return ExitBanger, err
	}
	defer conn.Close()

	resize := make(chan [2]uint16, 1)
	signals := make(chan int, 4)
	if o.tty && stdinIsTTY && passStdin {
		old, err := term.MakeRaw(int(stdinFile.Fd()))
		if err == nil {
			defer term.Restore(int(stdinFile.Fd()), old)
		}
		winch := make(chan os.Signal, 1)
		signal.Notify(winch, syscall.SIGWINCH)
		defer signal.Stop(winch)
		go func() {
			for range winch {
				if w, h, err := term.GetSize(int(stdinFile.Fd())); err == nil {
					select {
					case resize <- [2]uint16{uint16(h), uint16(w)}:
					default:
					}
				}
			}
		}()
	} else {
		// Ctrl-C and TERM go to the guest command; it decides how to end.
		sig := make(chan os.Signal, 2)
		signal.Notify(sig, os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
		defer signal.Stop(sig)
		go func() {
			for s := range sig {
				select {
				case signals <- int(s.(syscall.Signal)):
				default:
				}
			}
		}()
	}
	var stdin = g.stdin
	if !passStdin {
		stdin = nil
	}
	// The command's context is not used for the stream: an interrupt is
	// forwarded to the guest, not a reason to drop the connection.
	st, err := mux.RunExec(context.WithoutCancel(ctx), conn, stdin, g.stdout, g.stderr, resize, signals)
	if err != nil {
		return ExitBanger, fmt.Errorf("exec stream: %w", err)
	}
	if st.Error != "" && (st.Code == ExitNoFound || st.Code == ExitNoExec) {
		fmt.Fprintf(g.stderr, "banger: %s\n", st.Error)
	}
	return st.Code, nil
}

type sshOptions struct {
	name string
	argv []string
}

func newVMSSHCmd(g *globals) *cobra.Command {
	var o sshOptions
	cmd := &cobra.Command{
		Use:   "ssh NAME [-- CMD]",
		Short: "Open an SSH session to a VM (OpenSSH, pinned host key)",
		Args:  args(cobra.MinimumNArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			o.name, o.argv = a[0], stripDashes(a[1:])
			return g.ssh(cmd.Context(), o)
		},
	}
	cmd.Flags().SetInterspersed(false)
	return cmd
}

// ssh hands the terminal to OpenSSH as a child process. The VM's host key
// is pinned in a per-VM known_hosts file; host key checking stays strict.
func (g *globals) ssh(ctx context.Context, o sshOptions) error {
	c := g.client()
	info, err := c.SSHInfo(ctx, o.name)
	if err != nil {
		return err
	}
	argv := sshkeys.SSHArgs(sshkeys.SSHOpts{
		Host: info.Host, Port: info.Port, User: info.User, KeyFile: info.IdentityFile,
		KnownHostsFile: info.KnownHostsFile, HostKeyAlias: info.HostKeyAlias, Command: o.argv,
	})
	cmd := exec.Command("ssh", argv...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = g.stdin, g.stdout, g.stderr
	// The terminal belongs to ssh now; Ctrl-C is its business.
	signal.Ignore(os.Interrupt)
	defer signal.Reset(os.Interrupt)
	runErr := cmd.Run()
	if len(o.argv) == 0 {
		if vm, err := c.GetVM(context.WithoutCancel(ctx), o.name); err == nil && vm.State == api.VMRunning {
			fmt.Fprintf(g.stderr, "\nVM %s is still running. When you are done:\n  banger vm stop %s\n  banger vm delete %s\n", o.name, o.name, o.name)
		}
	}
	var ee *exec.ExitError
	if errors.As(runErr, &ee) {
		code := ee.ExitCode()
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			code = 128 + int(ws.Signal())
		}
		// ssh itself exits 255 on connection failures.
		return &exitError{code: code}
	}
	if runErr != nil {
		return &exitError{code: ExitBanger, err: fmt.Errorf("run ssh: %w", runErr)}
	}
	return nil
}

// stripDashes drops the "--" that separates NAME from the guest command:
// with interspersed flags off, cobra hands it through as an argument.
func stripDashes(a []string) []string {
	if len(a) > 0 && a[0] == "--" {
		return a[1:]
	}
	return a
}
