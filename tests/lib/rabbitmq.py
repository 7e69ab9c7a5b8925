"""RabbitMQ with its MQTT plugin, as a second broker for the tests (issue 14).

Debian's rabbitmq-server, started by the test as a plain process (not the
service): its own node name, Erlang cookie, data and log directories in a
temporary directory, and its own ports on 127.0.0.1 (AMQP, Erlang
distribution, MQTT, and a private epmd), so it neither needs nor touches
the system's RabbitMQ. Readiness: `rabbitmqctl await_startup`, polled
with a bound. Nodes made with the same `cluster` share epmd and cookie
and can be joined with join_cluster().

MQTT is plain TCP here (the bridge's TLS upstream is covered against
mosquitto); users come from rabbitmq.conf's default_user.
"""

import os
import secrets
import shutil
import signal
import subprocess
import time

from harness import BrokerCli, wait_port

RABBIT_BIN = "/usr/lib/rabbitmq/bin"   # not /usr/sbin: that wrapper switches to the rabbitmq user
AVAILABLE = os.path.exists(os.path.join(RABBIT_BIN, "rabbitmq-server")) and os.path.isdir(
    "/usr/lib/rabbitmq/lib")


def plugin_available():
    import glob
    return bool(glob.glob("/usr/lib/rabbitmq/lib/*/plugins/rabbitmq_mqtt-*"))


def quiet_port():
    """A free port below the ephemeral range (32768-60999 on Linux). A
    port from free_port() can be taken meanwhile as the source port of one
    of the many short connections Erlang's CLI makes while a node starts,
    and RabbitMQ then refuses to start (dist_port_already_used)."""
    import random
    import socket
    for _ in range(200):
        port = random.randint(20000, 32000)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-32000")


class Cluster:
    """What nodes of one cluster share: epmd's port and the cookie."""

    def __init__(self):
        self.epmd_port = quiet_port()
        self.cookie = secrets.token_hex(16).upper()
        self.nodes = []

    def kill_epmd(self):
        env = dict(os.environ, ERL_EPMD_PORT=str(self.epmd_port))
        subprocess.run(["epmd", "-kill"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=10)


class RabbitMQ(BrokerCli):
    kind = "rabbitmq"

    def __init__(self, workdir, name, user, password, cluster=None):
        self.dir = os.path.join(workdir, "rabbit-" + name)
        self.cluster = cluster or Cluster()
        self.cluster.nodes.append(self)
        self.node = "meb%s%d@localhost" % (name, os.getpid())
        self.port = quiet_port()          # MQTT
        self.amqp_port = quiet_port()
        self.dist_port = quiet_port()
        self.user, self.password = user, password
        self.unix_path = None
        home = os.path.join(self.dir, "home")
        for d in ("home", "mnesia", "log"):
            os.makedirs(os.path.join(self.dir, d), exist_ok=True)
        cookie = os.path.join(home, ".erlang.cookie")
        with open(cookie, "w") as f:
            f.write(self.cluster.cookie)
        os.chmod(cookie, 0o400)
        self.conf = os.path.join(self.dir, "rabbitmq.conf")
        with open(self.conf, "w") as f:
            f.write("\n".join([
                "listeners.tcp.default = 127.0.0.1:%d" % self.amqp_port,
                "mqtt.listeners.tcp.default = 127.0.0.1:%d" % self.port,
                "mqtt.allow_anonymous = false",
                "default_user = %s" % user,
                "default_pass = %s" % password,
                "loopback_users = none",
                "log.file.level = info",
            ]) + "\n")
        plugins = os.path.join(self.dir, "enabled_plugins")
        with open(plugins, "w") as f:
            f.write("[rabbitmq_mqtt].\n")
        self.env = dict(os.environ,
                        HOME=home,
                        RABBITMQ_NODENAME=self.node,
                        RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
                        RABBITMQ_NODE_PORT=str(self.amqp_port),
                        RABBITMQ_DIST_PORT=str(self.dist_port),
                        RABBITMQ_MNESIA_BASE=os.path.join(self.dir, "mnesia"),
                        RABBITMQ_LOG_BASE=os.path.join(self.dir, "log"),
                        RABBITMQ_CONFIG_FILE=self.conf,
                        RABBITMQ_ENABLED_PLUGINS_FILE=plugins,
                        RABBITMQ_PID_FILE=os.path.join(self.dir, "pid"),
                        ERL_EPMD_PORT=str(self.cluster.epmd_port),
                        ERL_EPMD_ADDRESS="127.0.0.1",
                        ERL_CRASH_DUMP=os.path.join(self.dir, "erl_crash.dump"))
        self.proc = None
        self.log = os.path.join(self.dir, "server.out")

    def ctl(self, *args, timeout=60, check=True):
        r = subprocess.run([os.path.join(RABBIT_BIN, "rabbitmqctl"), "-n", self.node] + list(args),
                           env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError("rabbitmqctl %s: %s" % (" ".join(args), r.stdout[-2000:]))
        return r

    def start(self, timeout=90):
        out = open(self.log, "a")
        self.proc = subprocess.Popen([os.path.join(RABBIT_BIN, "rabbitmq-server")], env=self.env,
                                     cwd=self.dir, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        out.close()
        deadline = time.monotonic() + timeout
        # await_startup fails at once while the node is not registered yet.
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                raise RuntimeError("RabbitMQ node %s did not start:\n%s" % (self.node, self.tail()))
            r = self.ctl("await_startup", "--timeout", str(int(max(1, min(left, 30)))),
                         timeout=left + 10, check=False)
            if r.returncode == 0:
                break
            time.sleep(0.5)
        wait_port(self.port, timeout=max(1, deadline - time.monotonic()))
        return self

    def tail(self):
        text = ""
        for p in [self.log] + [os.path.join(self.dir, "log", f) for f in
                               (os.listdir(os.path.join(self.dir, "log")) if os.path.isdir(
                                   os.path.join(self.dir, "log")) else [])]:
            try:
                with open(p) as f:
                    text += f.read()[-1500:]
            except OSError:
                pass
        return text

    def stop(self, sig=signal.SIGTERM):
        """Stop the node (rabbitmqctl stop, which waits for it), and if
        that fails, the process group we started."""
        if not self.proc:
            return
        if self.proc.poll() is None:
            r = self.ctl("stop", timeout=60, check=False)
            try:
                self.proc.wait(30 if r.returncode == 0 else 1)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None

    def join_cluster(self, other):
        """Make this (fresh) node a member of other's cluster."""
        self.ctl("stop_app")
        self.ctl("join_cluster", other.node)
        self.ctl("start_app")
        self.ctl("await_startup", "--timeout", "60", timeout=70)
        wait_port(self.port, timeout=30)

    def client_args(self, user=None, password=None):
        return ["-h", "127.0.0.1", "-p", str(self.port), "-u", user or self.user, "-P",
                password or self.password]

    def upstream_section(self, *others):
        """[upstream] for a bridge: this node first, then the others."""
        hosts = " ".join("127.0.0.1:%d" % n.port for n in (self,) + others)
        return {"host": hosts, "cafile": "", "certfile": "", "keyfile": ""}
