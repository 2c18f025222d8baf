#!/usr/bin/env python3
"""A disk whose syncs are slow, for the vault's backpressure test: a FUSE passthrough of a backing directory in
which every fsync and fdatasync of a file takes DELAY_MS before it runs. Everything else is passed straight
through (a directory's fsync is answered by the kernel: no handler, so FUSE treats it as done).

    slow-fsync-fs.py <backing directory> <mountpoint> <delay ms>     # stays in the foreground; SIGTERM unmounts

Needs python3-fuse (libfuse2) and /dev/fuse.
"""
import errno
import os
import sys
import time

import fuse
from fuse import Fuse

fuse.fuse_python_api = (0, 2)

BACKING = ""
DELAY = 0.0


def real(path):
    return BACKING + path


class SlowSyncFS(Fuse):
    def getattr(self, path):
        return os.lstat(real(path))

    def readdir(self, path, offset):
        for name in [".", ".."] + os.listdir(real(path)):
            yield fuse.Direntry(name)

    def mkdir(self, path, mode):
        os.mkdir(real(path), mode)

    def rmdir(self, path):
        os.rmdir(real(path))

    def unlink(self, path):
        os.unlink(real(path))

    def rename(self, old, new):
        os.rename(real(old), real(new))

    def truncate(self, path, size):
        os.truncate(real(path), size)

    def chmod(self, path, mode):
        os.chmod(real(path), mode)

    def utime(self, path, times):
        os.utime(real(path), times)

    def utimens(self, path, ts_acc, ts_mod):
        os.utime(real(path), ns=(ts_acc.tv_sec * 10**9 + ts_acc.tv_nsec, ts_mod.tv_sec * 10**9 + ts_mod.tv_nsec))

    def access(self, path, mode):
        if not os.access(real(path), mode):
            return -errno.EACCES

    def statfs(self):
        return os.statvfs(BACKING)

    def mknod(self, path, mode, dev):
        os.mknod(real(path), mode, dev)

    class File:
        def __init__(self, path, flags, *mode):
            self.fd = os.open(real(path), flags, *mode)

        def read(self, length, offset):
            return os.pread(self.fd, length, offset)

        def write(self, buf, offset):
            return os.pwrite(self.fd, buf, offset)

        def fgetattr(self):
            return os.fstat(self.fd)

        def ftruncate(self, length):
            os.ftruncate(self.fd, length)

        def flush(self):
            pass

        def fsync(self, datasync):
            time.sleep(DELAY)
            if datasync:
                os.fdatasync(self.fd)
            else:
                os.fsync(self.fd)

        def release(self, flags):
            os.close(self.fd)

    def main(self, *args, **kw):
        self.file_class = self.File
        return Fuse.main(self, *args, **kw)


def run():
    global BACKING, DELAY
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    BACKING = os.path.abspath(sys.argv[1])
    mountpoint = sys.argv[2]
    DELAY = int(sys.argv[3]) / 1000.0
    # Foreground, single-threaded: a slow sync holds the whole disk, as a slow device would.
    fs = SlowSyncFS(version="%prog 1", usage=__doc__, dash_s_do="setsingle")
    fs.parse(args=[mountpoint, "-f", "-s", "-o", "default_permissions"], errex=1)
    fs.main()


if __name__ == "__main__":
    run()
