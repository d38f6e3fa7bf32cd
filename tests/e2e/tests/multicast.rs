//! Multicast discovery, inside a network namespace this test creates (`unshare -n`), so the
//! agent can own port 5683 and the OCF groups without touching the machine's network:
//! IPv4 224.0.1.187 on the namespace's loopback (multicast switched on for it), and IPv6
//! ff02::158 from a second namespace joined by a veth pair (link-local addresses only). The
//! client is libcoap's `coap-client`; each group must answer exactly once, or libcoap's
//! block-wise reassembly of the answer fails. An interface that comes up after the start is
//! joined and listed too.

use std::process::Command;

use ciborium::Value;
use ocf_e2e::*;

/// Every `ep` of every link.
fn endpoints(links: &Value) -> Vec<String> {
    links
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| key(l, "eps")?.as_array())
        .flatten()
        .filter_map(|e| Some(key(e, "ep")?.as_text()?.to_string()))
        .collect()
}

/// Shell lines that make a second host: its own namespace (`$peer`), joined to ours by a veth
/// pair (`ocf0` here, `ocf1` there), both ends up with link-local IPv6 addresses usable at once
/// (no duplicate address detection).
const PEER: &str = r#"
unshare --net sleep 120 &
peer=$!
trap 'kill $peer 2>/dev/null || true' EXIT
sleep 0.2
ip link add ocf0 type veth peer name ocf1
ip link set ocf1 netns $peer
sysctl -qw net.ipv6.conf.ocf0.accept_dad=0
ip link set ocf0 up
nsenter -t $peer -n sh -c 'sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.ocf1.accept_dad=0; ip link set lo up; ip link set ocf1 up'
for i in $(seq 100); do
  ip -6 addr show dev ocf0 | grep fe80 | grep -vq tentative \
    && nsenter -t $peer -n ip -6 addr show dev ocf1 | grep fe80 | grep -vq tentative && break
  sleep 0.05
done
"#;

/// Shell lines that start the agent (sim board, `args` added, its output in `dir`), kill it and
/// any `$peer` on exit, and wait for its ready line.
fn start_agent(dir: &TempDir, args: &str) -> String {
    format!(
        r#"
'{agent}' --board sim --state-dir '{d}/state' {args} --insecure-dev >'{d}/out' 2>'{d}/err' &
pid=$!
trap 'kill $pid ${{peer:-}} 2>/dev/null || true' EXIT
for i in $(seq 200); do grep -q 'ocf-agent: ready' '{d}/out' && break; sleep 0.05; done
grep -q 'ocf-agent: ready' '{d}/out'
"#,
        agent = binary("ocf-agent").display(),
        d = dir.path().display(),
    )
}

/// Runs `script` in a new network namespace, after bringing its loopback up and turning
/// duplicate address detection off (so link-local addresses are usable at once); then stops the
/// agent it started with SIGTERM, which must end it cleanly. Fails with the script's output and
/// the agent's log unless all of it succeeds; returns the agent's log.
fn in_namespace(dir: &TempDir, script: &str) -> String {
    let script = format!(
        "set -eu\nip link set lo up\n\
         sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0\n\
         {script}\nkill -TERM $pid\nwait $pid\n"
    );
    let out = Command::new("unshare")
        .args(["--net", "--", "sh", "-c", &script])
        .output()
        .expect("run unshare (util-linux)");
    let err = std::fs::read_to_string(dir.path().join("err")).unwrap_or_default();
    assert!(
        out.status.success(),
        "namespace script failed: {}\n{}\nagent log:\n{err}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    err
}

#[test]
fn multicast_discovery_in_a_network_namespace() {
    let dir = TempDir::new("multicast");
    let script = format!(
        r#"
ip link set lo multicast on
ip route add 224.0.0.0/4 dev lo
{peer}
{agent}
'{client}' -N -B 2 -m get -o '{d}/v4.cbor' 'coap://224.0.1.187/oic/res'
'{client}' -N -B 2 -m get -o '{d}/v4-miss.cbor' 'coap://224.0.1.187/oic/res?rt=oic.r.nothing' || true
nsenter -t $peer -n '{client}' -N -B 2 -m get -o '{d}/v6.cbor' 'coap://[ff02::158%ocf1]/oic/res'
'{mediator}' discover --wait 1.5 >'{d}/discover-local.txt'
nsenter -t $peer -n '{mediator}' discover --wait 1.5 >'{d}/discover-peer.txt'
"#,
        peer = PEER,
        agent = start_agent(&dir, "--tcp 127.0.0.1:0"),
        d = dir.path().display(),
        mediator = binary("ocf-mediator").display(),
        client = coap_client(),
    );
    let err = in_namespace(&dir, &script);
    for file in ["v4.cbor", "v6.cbor"] {
        let bytes = std::fs::read(dir.path().join(file)).unwrap_or_default();
        let links: Value = ciborium::de::from_reader(bytes.as_slice()).unwrap_or_else(|e| {
            panic!("{file}: no CBOR answer to multicast discovery ({e})\nagent log:\n{err}")
        });
        let hrefs: Vec<&str> = links
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|l| key(l, "href")?.as_text())
            .collect();
        assert!(hrefs.contains(&"/temperature"), "{file}: {hrefs:?}");
        // The loopback interface carries the MULTICAST flag here; its addresses are still not
        // for other hosts. (The TCP listener bound to 127.0.0.1 alone is listed.)
        for ep in endpoints(&links) {
            assert!(
                !(ep.starts_with("coap://127.") || ep.starts_with("coap://[::1]")),
                "{file}: loopback endpoint {ep} advertised"
            );
            assert!(
                !ep.contains("://[::]") && !ep.contains("://0.0.0.0"),
                "{file}: {ep}"
            );
        }
    }
    // The Mediator finds the device from this host (IPv4 and IPv6 groups) and from the other
    // namespace (IPv6 link-local only), with its endpoints.
    let di = std::fs::read_to_string(dir.path().join("out"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("ocf-agent: di ").map(str::to_string))
        .expect("di line");
    for file in ["discover-local.txt", "discover-peer.txt"] {
        let text = std::fs::read_to_string(dir.path().join(file)).unwrap();
        assert!(text.contains(&format!("device {di}")), "{file}:\n{text}");
        assert!(text.contains("ep coap+tcp://"), "{file}:\n{text}");
        assert!(
            text.contains("/temperature oic.r.temperature"),
            "{file}:\n{text}"
        );
    }
    // A filter that matches nothing gets no answer at all from a multicast group member.
    let miss = std::fs::read(dir.path().join("v4-miss.cbor")).unwrap_or_default();
    assert!(
        miss.is_empty(),
        "unexpected answer to a non-matching multicast query: {miss:02x?}"
    );
}

/// An interface that comes up after the agent started (DHCP finishing after the service, which
/// does not wait for network-online.target): within the re-scan interval the agent joins both
/// OCF groups on it (the kernel's membership tables, /proc/net/igmp and igmp6) and lists its
/// address among the endpoints of `/oic/res`.
#[test]
fn an_interface_that_comes_up_later_is_joined_and_listed() {
    let dir = TempDir::new("late-iface");
    let script = format!(
        r#"
{agent}
cat /proc/net/igmp >'{d}/igmp-before'
# The "LAN" appears: a veth pair, up, with an address on our end.
ip link add ocf0 type veth peer name ocf1
ip addr add 10.77.0.1/24 dev ocf0
ip link set ocf1 up
ip link set ocf0 up
# Membership of 224.0.1.187 (BB0100E0 in /proc/net/igmp) on ocf0, within 30 s.
joined() {{ awk '/^[0-9]/ {{ dev = $2 }} dev == "ocf0" && $1 == "BB0100E0" {{ found = 1 }} END {{ exit !found }}' /proc/net/igmp; }}
for i in $(seq 300); do joined && break; sleep 0.1; done
# The endpoints are updated in the same re-scan, after the joins; one more second for IPv6.
sleep 1
cat /proc/net/igmp >'{d}/igmp'
cat /proc/net/igmp6 >'{d}/igmp6'
ip -o link show ocf0 | cut -d: -f1 >'{d}/ifindex'
'{client}' -B 5 -m get -o '{d}/res.cbor' 'coap://127.0.0.1/oic/res'
"#,
        agent = start_agent(&dir, "--tcp 127.0.0.1:0"),
        d = dir.path().display(),
        client = coap_client(),
    );
    let err = in_namespace(&dir, &script);
    let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).unwrap_or_default();
    // Not there at the start: the interface did not exist.
    assert!(
        !read("igmp-before").contains("ocf0"),
        "{}",
        read("igmp-before")
    );
    // /proc/net/igmp: a device line ("3  ocf0 : ...") followed by its groups.
    let mut device = String::new();
    let mut v4 = false;
    for line in read("igmp").lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if line.starts_with(|c: char| c.is_ascii_digit()) {
            device = fields.get(1).unwrap_or(&"").to_string();
        } else if device == "ocf0" && fields.first() == Some(&"BB0100E0") {
            v4 = true;
        }
    }
    assert!(
        v4,
        "224.0.1.187 not joined on ocf0:\n{}\nlog:\n{err}",
        read("igmp")
    );
    // /proc/net/igmp6: "idx device group ..." with the group in hex.
    let index = read("ifindex").trim().to_string();
    let v6 = read("igmp6").lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 2 && f[0] == index && f[1] == "ocf0" && f[2] == "ff020000000000000000000000000158"
    });
    assert!(
        v6,
        "ff02::158 not joined on ocf0:\n{}\nlog:\n{err}",
        read("igmp6")
    );
    assert!(
        err.contains("joined 224.0.1.187:5683") && err.contains("ocf0"),
        "{err}"
    );
    // /oic/res lists the new address.
    let bytes = std::fs::read(dir.path().join("res.cbor")).unwrap_or_default();
    let links: Value = ciborium::de::from_reader(bytes.as_slice())
        .unwrap_or_else(|e| panic!("no /oic/res answer ({e})\nagent log:\n{err}"));
    let text = format!("{links:?}");
    assert!(
        text.contains("coap://10.77.0.1:5683"),
        "{text}\nlog:\n{err}"
    );
    // Joining once per change: no errors logged for joins repeated at each re-scan.
    assert!(!err.contains("cannot join"), "{err}");
}

/// A LAN whose only IPv6 addresses are link-local, as most home LANs are: the agent lists its
/// `fe80::` address (never `[::]`), and an IPv6 client that takes the first IPv6 endpoint of the
/// discovery answer (aiocoap, from a second namespace) reads and observes through it.
#[test]
fn a_link_local_only_lan_gets_a_usable_ipv6_endpoint() {
    let dir = TempDir::new("link-local");
    let script = format!(
        r#"
{peer}
ip -6 -o addr show dev ocf0 scope link | awk '{{print $4}}' | cut -d/ -f1 >'{d}/agent-address'
{agent}
nsenter -t $peer -n '{python}' '{script}' ocf1 >'{d}/client.json'
"#,
        python = interop_python().display(),
        script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/interop/aiocoap_first_endpoint.py"
        ),
        peer = PEER,
        agent = start_agent(&dir, ""),
        d = dir.path().display(),
    );
    in_namespace(&dir, &script);
    let address = std::fs::read_to_string(dir.path().join("agent-address")).unwrap();
    let address = address.trim();
    assert!(address.starts_with("fe80:"), "{address}");
    let client = std::fs::read_to_string(dir.path().join("client.json")).unwrap();
    let client: serde_json::Value = serde_json::from_str(&client).expect(&client);
    let want = format!("coap://[{address}]:5683");
    assert_eq!(client["first_ipv6"], want.as_str(), "{client}");
    let eps: Vec<&str> = client["eps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e.as_str())
        .collect();
    assert!(
        eps.iter()
            .all(|e| !e.contains("[::]") && !e.contains("[::1]") && !e.contains("127.0.0.1")),
        "unusable endpoints listed: {eps:?}"
    );
    assert_eq!(client["get_code"], "2.05 Content", "{client}");
    assert!(client["temperature"].is_number(), "{client}");
    let seq = client["observe_sequence"].as_array().unwrap();
    assert!(
        seq.len() >= 2,
        "no notification through the link-local endpoint: {client}"
    );
}
