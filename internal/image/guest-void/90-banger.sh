# banger: per-VM identity and network, run by runit stage 1 after the
# filesystems (including the seed disk and /root from /etc/fstab) are up.
# Void's kernel ignores ip=, so the NIC is set from banger's own keys.
if [ -x /run/banger/seed/banger-agent ]; then
	msg "banger: applying VM identity"
	/run/banger/seed/banger-agent init || msg_warn "banger-agent init failed"
fi
for kv in $(cat /proc/cmdline); do
	case "$kv" in
	banger.ip=*) BANGER_IP=${kv#banger.ip=} ;;
	banger.gw=*) BANGER_GW=${kv#banger.gw=} ;;
	esac
done
if [ -n "$BANGER_IP" ]; then
	ip link set lo up
	ip link set eth0 up
	ip addr add "$BANGER_IP" dev eth0
	[ -n "$BANGER_GW" ] && ip route add default via "$BANGER_GW"
fi
