/* LD_PRELOAD shim for scripts/storage_faults.py: makes writes to the queue's shard files fail
 * with EIO or EROFS while a control file says so, then lets them through again.
 *
 * MQS_FAULT_CONTROL names the control file: its first bytes are "EIO", "EROFS" or anything
 * else (off). It is re-read at most every MQS_FAULT_RECHECK_MS milliseconds (5; 0: at every call). Only descriptors whose path contains
 * "mq-shard-" are affected (the database, its -wal and -shm files); the write calls
 * (write, pwrite, pwrite64, writev, fsync, fdatasync, ftruncate) fail with the errno. During
 * an EROFS window statvfs() also reports the file system read-only (ST_RDONLY), as a real
 * remount read-only (ext4 errors=remount-ro) would show it. Built by the runner with cc. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define MAX_FD 65536
static unsigned char kind[MAX_FD]; /* 0 unknown, 1 shard file, 2 other */
static int mode;                   /* 0 off, else the errno to fail with */
static long long checked_ns;

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int current_mode(void) {
    static long long recheck_ns = -1;
    if (recheck_ns < 0) { /* MQS_FAULT_RECHECK_MS: how often to re-read the control file (5) */
        const char *ms = getenv("MQS_FAULT_RECHECK_MS");
        recheck_ns = (ms ? atoll(ms) : 5) * 1000000LL;
    }
    long long now = now_ns();
    if (now - __atomic_load_n(&checked_ns, __ATOMIC_RELAXED) < recheck_ns)
        return __atomic_load_n(&mode, __ATOMIC_RELAXED);
    __atomic_store_n(&checked_ns, now, __ATOMIC_RELAXED);
    const char *control = getenv("MQS_FAULT_CONTROL");
    int found = 0;
    if (control) {
        int fd = (int)syscall(SYS_openat, AT_FDCWD, control, O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            char buf[8] = {0};
            long n = syscall(SYS_read, fd, buf, sizeof buf - 1);
            syscall(SYS_close, fd);
            if (n > 0 && strncmp(buf, "EIO", 3) == 0) found = EIO;
            else if (n > 0 && strncmp(buf, "EROFS", 5) == 0) found = EROFS;
        }
    }
    __atomic_store_n(&mode, found, __ATOMIC_RELAXED);
    return found;
}

static int is_shard(int fd) {
    if (fd < 0 || fd >= MAX_FD) return 0;
    unsigned char k = __atomic_load_n(&kind[fd], __ATOMIC_RELAXED);
    if (k == 0) {
        char link[64], target[4096];
        snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
        long n = syscall(SYS_readlinkat, AT_FDCWD, link, target, sizeof target - 1);
        target[n > 0 ? n : 0] = 0;
        k = (n > 0 && strstr(target, "mq-shard-")) ? 1 : 2;
        __atomic_store_n(&kind[fd], k, __ATOMIC_RELAXED);
    }
    return k == 1;
}

static int fault(int fd) {
    int m = current_mode();
    if (m && is_shard(fd)) {
        errno = m;
        return 1;
    }
    return 0;
}

#define REAL(name) static __typeof__(name) *real_##name; \
    if (!real_##name) real_##name = (__typeof__(name) *)dlsym(RTLD_NEXT, #name)

int close(int fd) {
    REAL(close);
    if (fd >= 0 && fd < MAX_FD) __atomic_store_n(&kind[fd], 0, __ATOMIC_RELAXED);
    return real_close(fd);
}

ssize_t write(int fd, const void *buf, size_t count) {
    REAL(write);
    if (fault(fd)) return -1;
    return real_write(fd, buf, count);
}

ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset) {
    REAL(pwrite);
    if (fault(fd)) return -1;
    return real_pwrite(fd, buf, count, offset);
}

ssize_t pwrite64(int fd, const void *buf, size_t count, off64_t offset) {
    REAL(pwrite64);
    if (fault(fd)) return -1;
    return real_pwrite64(fd, buf, count, offset);
}

ssize_t writev(int fd, const struct iovec *iov, int iovcnt) {
    REAL(writev);
    if (fault(fd)) return -1;
    return real_writev(fd, iov, iovcnt);
}

int fsync(int fd) {
    REAL(fsync);
    if (fault(fd)) return -1;
    return real_fsync(fd);
}

int fdatasync(int fd) {
    REAL(fdatasync);
    if (fault(fd)) return -1;
    return real_fdatasync(fd);
}

int ftruncate(int fd, off_t length) {
    REAL(ftruncate);
    if (fault(fd)) return -1;
    return real_ftruncate(fd, length);
}

int ftruncate64(int fd, off64_t length) {
    REAL(ftruncate64);
    if (fault(fd)) return -1;
    return real_ftruncate64(fd, length);
}

int statvfs(const char *path, struct statvfs *buf) {
    REAL(statvfs);
    int rc = real_statvfs(path, buf);
    if (rc == 0 && current_mode() == EROFS) buf->f_flag |= ST_RDONLY;
    return rc;
}

int statvfs64(const char *path, struct statvfs64 *buf) {
    REAL(statvfs64);
    int rc = real_statvfs64(path, buf);
    if (rc == 0 && current_mode() == EROFS) buf->f_flag |= ST_RDONLY;
    return rc;
}

int fstatvfs(int fd, struct statvfs *buf) {
    REAL(fstatvfs);
    int rc = real_fstatvfs(fd, buf);
    if (rc == 0 && current_mode() == EROFS) buf->f_flag |= ST_RDONLY;
    return rc;
}
