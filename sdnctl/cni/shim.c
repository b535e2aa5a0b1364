/* sdnctl CNI plugin: the per-call executable a runtime starts (ADD, DEL, CHECK, STATUS, GC).
 *
 * Design note. A CNI plugin is one process per call, and Python's start-up alone (~10 ms on a
 * quiet machine, several times that on a busy one) was a third of an ADD. This program starts in
 * about a millisecond and does no CNI logic of its own: it passes the call as it came to the
 * agent of the host it runs on, over the agent's abstract unix socket (@sdnctl-agent, per network
 * namespace; $SDNCTL_CNI_SOCKET names another, or a path when it starts with "/"):
 *
 *     {"shim": 1, "env": {"CNI_COMMAND": "...", ...}}\n<stdin, unchanged>
 *
 * The agent checks the configuration and the environment with the Python plugin's own code
 * (sdnctl/cni/plugin.py) and answers "0\n" or "1\n" (the exit status) followed by exactly what
 * to print: the result, nothing, or the spec's error object. VERSION, any other command, and a
 * host where no agent listens are left to the Python plugin (exec'd with the stdin read so far,
 * from a memfd), which answers them as before: the VERSION document, error 4, error 11.
 *
 * Built by scripts/setup.sh: cc -O2 -DPYTHON='"<venv python>"' -DPLUGIN='"<plugin.py>"'.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#ifndef PYTHON
#define PYTHON "/usr/bin/python3"
#endif
#ifndef PLUGIN
#define PLUGIN "/usr/lib/sdnctl/plugin.py"
#endif
#define TIMEOUT_S 60

static const char *ENV_NAMES[] = {"CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME",
                                  "CNI_ARGS", "CNI_PATH", NULL};

struct buf {
    char *data;
    size_t len, cap;
};

static void put(struct buf *b, const char *data, size_t len) {
    if (b->len + len > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + len) cap *= 2;
        char *grown = realloc(b->data, cap);
        if (!grown) {
            fputs("{\"cniVersion\":\"1.0.0\",\"code\":999,\"msg\":\"sdnctl-cni: out of memory\"}\n",
                  stdout);
            exit(1);
        }
        b->data = grown;
        b->cap = cap;
    }
    memcpy(b->data + b->len, data, len);
    b->len += len;
}

static void put_str(struct buf *b, const char *s) { put(b, s, strlen(s)); }

/* A JSON string: quotes, backslashes and control characters escaped; other bytes as they are. */
static void put_json_string(struct buf *b, const char *s) {
    put(b, "\"", 1);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            char esc[2] = {'\\', (char)c};
            put(b, esc, 2);
        } else if (c < 0x20) {
            char esc[7];
            snprintf(esc, sizeof esc, "\\u%04x", c);
            put(b, esc, 6);
        } else {
            put(b, (const char *)&c, 1);
        }
    }
    put(b, "\"", 1);
}

/* Run the Python plugin in our place, with what we read of stdin as its stdin. */
static void python_plugin(const struct buf *in) {
    if (in) {
        int fd = memfd_create("sdnctl-cni-stdin", 0);
        if (fd >= 0) {
            size_t done = 0;
            while (done < in->len) {
                ssize_t n = write(fd, in->data + done, in->len - done);
                if (n <= 0) break;
                done += (size_t)n;
            }
            lseek(fd, 0, SEEK_SET);
            dup2(fd, 0);
            close(fd);
        }
    }
    char *argv[] = {PYTHON, "-S", "-E", PLUGIN, NULL};
    execv(PYTHON, argv);
    printf("{\"cniVersion\":\"1.0.0\",\"code\":999,\"msg\":\"sdnctl-cni: cannot run %s: %s\"}\n",
           PYTHON, strerror(errno));
    exit(1);
}

static int agent_socket(void) {
    const char *name = getenv("SDNCTL_CNI_SOCKET");
    if (!name || !*name) name = "sdnctl-agent";
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    socklen_t len;
    if (name[0] == '/') {
        if (strlen(name) >= sizeof addr.sun_path) return -1;
        strcpy(addr.sun_path, name);
        len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(name) + 1);
    } else {
        if (name[0] == '@') name++;
        if (strlen(name) + 1 > sizeof addr.sun_path) return -1;
        memcpy(addr.sun_path + 1, name, strlen(name)); /* abstract: a leading NUL */
        len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + strlen(name));
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    struct timeval tv = {TIMEOUT_S, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&addr, len) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static int send_all(int fd, const char *data, size_t len) {
    while (len) {
        ssize_t n = send(fd, data, len, MSG_NOSIGNAL);
        if (n <= 0) return -1;
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

int main(void) {
    const char *command = getenv("CNI_COMMAND");
    if (!command || (strcmp(command, "ADD") && strcmp(command, "DEL") &&
                     strcmp(command, "CHECK") && strcmp(command, "STATUS") &&
                     strcmp(command, "GC")))
        python_plugin(NULL); /* VERSION (stdin untouched), or the error for anything else */

    struct buf in = {0};
    char chunk[65536];
    ssize_t n;
    while ((n = read(0, chunk, sizeof chunk)) > 0) put(&in, chunk, (size_t)n);

    int fd = agent_socket();
    if (fd < 0) python_plugin(&in); /* no agent here: error 11, in the configuration's version */

    struct buf req = {0};
    put_str(&req, "{\"shim\": 1, \"env\": {");
    for (int i = 0; ENV_NAMES[i]; i++) {
        const char *value = getenv(ENV_NAMES[i]);
        if (i) put_str(&req, ", ");
        put_json_string(&req, ENV_NAMES[i]);
        put_str(&req, ": ");
        put_json_string(&req, value ? value : "");
    }
    put_str(&req, "}}\n");
    put(&req, in.data ? in.data : "", in.len);
    if (send_all(fd, req.data, req.len) != 0) {
        close(fd);
        python_plugin(&in); /* the agent went away before it read the call: nothing was done */
    }
    shutdown(fd, SHUT_WR);

    struct buf answer = {0};
    while ((n = read(fd, chunk, sizeof chunk)) > 0) put(&answer, chunk, (size_t)n);
    close(fd);
    if (answer.len < 2 || (answer.data[0] != '0' && answer.data[0] != '1') ||
        answer.data[1] != '\n') {
        fputs("{\"cniVersion\":\"1.0.0\",\"code\":11,\"msg\":\"the sdnctl agent closed the "
              "connection without an answer; try again later\"}\n",
              stdout);
        return 1;
    }
    fwrite(answer.data + 2, 1, answer.len - 2, stdout);
    return answer.data[0] == '0' ? 0 : 1;
}
