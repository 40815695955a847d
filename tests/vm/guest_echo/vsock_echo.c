/* Test guest services on AF_VSOCK, one forked process per connection.
 *
 *   5000 echo    writes back everything it reads
 *   5001 sink    reads until EOF, then replies "<bytes> <crc32>\n"
 *   5002 source  reads "<bytes>\n", sends that many pseudo-random bytes, then their
 *                crc32 as 4 little-endian bytes, then closes
 *   5003 dial    reads "<port> <bytes>\n", connects to the host (CID 2) on <port>, sends
 *                like source does, replies "DONE\n" or "ERR <errno>\n"
 *   5004 discard reads until EOF, replies "<bytes>\n" (no per-byte work: for benchmarks)
 *   5005 zeros   reads "<bytes>\n", sends that many zero bytes, closes (for benchmarks)
 *   5006 reset   replies "OK\n", closes, then unbinds and rebinds the virtio-vsock driver:
 *                the device is reset and set up again, every connection is dropped
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

#define BUF (64 * 1024)

static uint32_t crc_table[256];

static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
}

static uint32_t crc_update(uint32_t crc, const unsigned char *p, size_t n) {
    crc = ~crc;
    while (n--)
        crc = crc_table[(crc ^ *p++) & 0xFF] ^ (crc >> 8);
    return ~crc;
}

static int write_all(int fd, const void *buf, size_t n) {
    const char *p = buf;
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int read_line(int fd, char *line, size_t size) {
    size_t n = 0;
    while (n + 1 < size) {
        ssize_t r = read(fd, line + n, 1);
        if (r <= 0)
            return -1;
        if (line[n] == '\n')
            break;
        n++;
    }
    line[n] = 0;
    return 0;
}

static int send_random(int fd, unsigned long long total) {
    static unsigned char buf[BUF];
    uint64_t x = 0x9E3779B97F4A7C15ull ^ total;
    uint32_t crc = 0;
    while (total) {
        size_t n = total < BUF ? (size_t)total : BUF;
        for (size_t i = 0; i < n; i += 8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            memcpy(buf + i, &x, 8);
        }
        crc = crc_update(crc, buf, n);
        if (write_all(fd, buf, n) < 0)
            return -1;
        total -= n;
    }
    unsigned char trailer[4] = {crc, crc >> 8, crc >> 16, crc >> 24};
    return write_all(fd, trailer, 4);
}

static void serve_echo(int fd) {
    static char buf[BUF];
    ssize_t n;
    while ((n = read(fd, buf, sizeof buf)) > 0)
        if (write_all(fd, buf, (size_t)n) < 0)
            return;
}

static void serve_sink(int fd) {
    static unsigned char buf[BUF];
    unsigned long long total = 0;
    uint32_t crc = 0;
    ssize_t n;
    while ((n = read(fd, buf, sizeof buf)) > 0) {
        crc = crc_update(crc, buf, (size_t)n);
        total += (unsigned long long)n;
    }
    dprintf(fd, "%llu %u\n", total, crc);
}

static void serve_source(int fd) {
    char line[64];
    if (read_line(fd, line, sizeof line) == 0)
        send_random(fd, strtoull(line, NULL, 10));
}

static void serve_discard(int fd) {
    static char buf[BUF];
    unsigned long long total = 0;
    ssize_t n;
    while ((n = read(fd, buf, sizeof buf)) > 0)
        total += (unsigned long long)n;
    dprintf(fd, "%llu\n", total);
}

static void serve_zeros(int fd) {
    static char buf[BUF];
    char line[64];
    if (read_line(fd, line, sizeof line) < 0)
        return;
    unsigned long long total = strtoull(line, NULL, 10);
    while (total) {
        size_t n = total < BUF ? (size_t)total : BUF;
        if (write_all(fd, buf, n) < 0)
            return;
        total -= n;
    }
}

static void write_file(const char *path, const char *text) {
    int fd = open(path, O_WRONLY);
    if (fd < 0 || write(fd, text, strlen(text)) < 0)
        perror(path);
    if (fd >= 0)
        close(fd);
}

static void serve_reset(int fd) {
    static const char *driver = "/sys/bus/virtio/drivers/vmw_vsock_virtio_transport";
    char device[256] = "";
    DIR *dir = opendir(driver);
    struct dirent *entry;
    while (dir && (entry = readdir(dir)))
        if (strncmp(entry->d_name, "virtio", 6) == 0)
            snprintf(device, sizeof device, "%s", entry->d_name);
    if (dir)
        closedir(dir);
    if (!device[0]) {
        dprintf(fd, "ERR no device\n");
        return;
    }
    dprintf(fd, "OK\n");
    close(fd);
    sleep(1); /* let this connection finish closing before its transport goes away */
    char path[512];
    snprintf(path, sizeof path, "%s/unbind", driver);
    write_file(path, device);
    snprintf(path, sizeof path, "%s/bind", driver);
    write_file(path, device);
    printf("vsock-echo: virtio-vsock device %s reset\n", device);
    fflush(stdout);
}

static void serve_dial(int fd) {
    char line[64];
    unsigned int port;
    unsigned long long total;
    if (read_line(fd, line, sizeof line) < 0 || sscanf(line, "%u %llu", &port, &total) != 2) {
        dprintf(fd, "ERR %d\n", EINVAL);
        return;
    }
    int s = socket(AF_VSOCK, SOCK_STREAM, 0);
    struct sockaddr_vm addr = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_HOST, .svm_port = port};
    if (s < 0 || connect(s, (struct sockaddr *)&addr, sizeof addr) < 0 || send_random(s, total) < 0) {
        dprintf(fd, "ERR %d\n", errno);
        return;
    }
    close(s);
    dprintf(fd, "DONE\n");
}

/* Bound before forking, so every port accepts once main() returns to the init script. */
static void listen_on(unsigned int port, void (*serve)(int)) {
    int s = socket(AF_VSOCK, SOCK_STREAM, 0);
    struct sockaddr_vm addr = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = port};
    if (s < 0 || bind(s, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(s, 128) < 0) {
        perror("vsock-echo: listen");
        exit(1);
    }
    if (fork() != 0) {
        close(s);
        return;
    }
    for (;;) {
        int c = accept(s, NULL, NULL);
        if (c < 0)
            continue;
        if (fork() == 0) {
            close(s);
            serve(c);
            close(c);
            _exit(0);
        }
        close(c);
    }
}

int main(void) {
    signal(SIGCHLD, SIG_IGN); /* no zombies from connection children */
    signal(SIGPIPE, SIG_IGN);
    crc_init();
    listen_on(5000, serve_echo);
    listen_on(5001, serve_sink);
    listen_on(5002, serve_source);
    listen_on(5003, serve_dial);
    listen_on(5004, serve_discard);
    listen_on(5005, serve_zeros);
    listen_on(5006, serve_reset);
    printf("vsock-echo: listening on 5000-5006\n");
    return 0;
}
