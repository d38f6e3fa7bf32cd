#
# SPDX-License-Identifier: MIT
#
# testimage checks of ocf-agent on the running image (yocto/kas/qemuarm64.yml with
# yocto/kas/debug.yml: testimage reaches the target over SSH).

import time

from oeqa.core.decorator.depends import OETestDepends
from oeqa.runtime.case import OERuntimeTestCase
from oeqa.runtime.decorator.package import OEHasPackage

# A confirmable CoAP GET of /oic/res to the agent's UDP endpoint (RFC 7252 §3: version 1, CON,
# a 2-byte token, two Uri-Path options), answered by a piggybacked ACK 2.05 with the same token
# whose CBOR body lists the device's links (OCF Core §6.2.2, /oic/res).
COAP_GET_OIC_RES = r'''
import os, socket, sys
token = os.urandom(2)
request = bytes([0x42, 0x01, 0x4f, 0x43]) + token + b"\xb3oic\x03res"
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
for attempt in range(5):
    s.sendto(request, ("127.0.0.1", 5683))
    try:
        reply = s.recv(4096)
        break
    except socket.timeout:
        continue
else:
    sys.exit("no answer from 127.0.0.1:5683")
if reply[0] >> 4 != 0x6 or reply[1] != 0x45 or reply[4:6] != token:
    sys.exit("not an ACK 2.05 for our token: %s" % reply[:8].hex())
if b"/oic/d" not in reply or b"oic.wk.res" not in reply:
    sys.exit("no /oic/d link in the answer: %r" % reply)
print("ok %d bytes" % len(reply))
'''

# Ports that may listen on a non-loopback address: the agent's CoAP (5683) and CoAP over TLS
# (5684), the DHCP clients of systemd-networkd (68, 546), and SSH in a debug image.
ALLOWED_PORTS = {5683, 5684, 68, 546}


class OcfAgentTest(OERuntimeTestCase):

    def wait_active(self, unit, seconds=60):
        deadline = time.time() + seconds
        while True:
            status, output = self.target.run('systemctl is-active %s' % unit)
            if output.strip() == 'active' or time.time() > deadline:
                return status, output.strip()
            time.sleep(2)

    @OETestDepends(['ssh.SSHTest.test_ssh'])
    @OEHasPackage(['ocf-agent'])
    def test_ocf_agent_active(self):
        status, state = self.wait_active('ocf-agent.service')
        _, log = self.target.run('journalctl -u ocf-agent.service --no-pager -n 50')
        self.assertEqual(state, 'active', msg='ocf-agent.service is %s:\n%s' % (state, log))

    @OETestDepends(['ocf_agent.OcfAgentTest.test_ocf_agent_active'])
    @OEHasPackage(['ocf-agent'])
    def test_ocf_agent_runs_unprivileged(self):
        status, output = self.target.run(
            'ps -o user= -p "$(systemctl show -P MainPID ocf-agent.service)"')
        self.assertEqual(status, 0, msg=output)
        self.assertEqual(output.strip(), 'ocf-agent', msg='the agent runs as %s' % output)

    @OETestDepends(['ocf_agent.OcfAgentTest.test_ocf_agent_active'])
    @OEHasPackage(['ocf-agent'])
    def test_ocf_agent_state_directory(self):
        status, output = self.target.run('stat -c "%a %U %G" /var/lib/ocf-agent')
        self.assertEqual(status, 0, msg=output)
        self.assertEqual(output.strip(), '700 ocf-agent ocf-agent',
                         msg='/var/lib/ocf-agent: mode, owner, group are %s' % output)

    @OETestDepends(['ocf_agent.OcfAgentTest.test_ocf_agent_active'])
    @OEHasPackage(['ocf-agent'])
    @OEHasPackage(['python3-core'])
    def test_ocf_agent_answers_oic_res(self):
        status, output = self.target.run("python3 - <<'EOF'\n%s\nEOF" % COAP_GET_OIC_RES)
        self.assertEqual(status, 0, msg='GET /oic/res over UDP: %s' % output)

    @OETestDepends(['ocf_agent.OcfAgentTest.test_ocf_agent_active'])
    @OEHasPackage(['ocf-agent'])
    def test_only_the_agent_listens_on_the_network(self):
        allowed = set(ALLOWED_PORTS)
        if 'dropbear' in self.tc.image_packages or 'openssh-sshd' in self.tc.image_packages:
            allowed.add(22)
        found = []
        for table in ('tcp', 'tcp6', 'udp', 'udp6'):
            status, output = self.target.run('cat /proc/net/%s' % table)
            self.assertEqual(status, 0, msg=output)
            for line in output.splitlines()[1:]:
                fields = line.split()
                local, remote, state = fields[1], fields[2], fields[3]
                address, port = local.split(':')
                port = int(port, 16)
                # TCP: listening sockets (state 0A); UDP: sockets not connected to a peer.
                if table.startswith('tcp') and state != '0A':
                    continue
                if table.startswith('udp') and int(remote.split(':')[1], 16) != 0:
                    continue
                loopback = address in ('0100007F', '3500007F', '3600007F') or \
                    address == '00000000000000000000000001000000'
                if not loopback and port not in allowed:
                    found.append('%s port %d' % (table, port))
        self.assertEqual(found, [], msg='listening besides the agent: %s' % ', '.join(found))
