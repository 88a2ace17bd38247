"""The process between `run_python` and the program: `python -I -S _bootstrap.py key=value ...`.

Stdlib only, run by path with site disabled: it must not import r1core, and imports little (json
and site would each add more than the namespaces cost). One interpreter start per run; every later
process is a fork of this one, and the program runs in-process in the last.

Sandboxed, four processes:
  setup    (this one) unshares the user, mount, network, pid, ipc, uts and cgroup namespaces; a
           helper forked before that, still outside, writes the id maps (in-namespace root and the
           program's uid onto two unprivileged uids outside, so the program owns no host file and
           can signal no host process); allows no user namespace inside; makes every mount
           read-only, hides the directories others may not enter except the interpreter's, mounts
           empty tmpfs on /tmp (the run's directory) and /dev/shm; forks init and waits for it.
           SIGTERM here kills init.
  init     pid 1 of the new pid namespace: mounts its /proc, forks the program, waits for it and
           writes its wait status and CPU time to the status fd. When init exits the kernel kills
           every process left in the namespace, so nothing of the run outlives it.
  program  drops to the unprivileged uid (losing every capability), sets the rlimits, closes the
           status fd and runs the code as __main__.
Unsandboxed (allow_unsandboxed), this process is the program: rlimits, a host temp directory.

To the status fd: `unavailable <message>` where the kernel refused a namespace, mount or id
change, `error <message>` for a failure preparing the program, `exit <wait status> <cpu seconds>`
for the program's end.
"""
import _signal  # not signal: its enums cost more than the namespaces
import ctypes
import os
import resource
import sys

CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS = 0x00020000, 0x02000000, 0x04000000
CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x08000000, 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
SYS_MOUNT_SETATTR, AT_FDCWD, AT_RECURSIVE = 442, -100, 0x8000  # 442 on every architecture but alpha
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID = 0x1, 0x2
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
ROOT_IN_NS, PROGRAM_UID = 0, 1000  # in-namespace ids; mapped onto cfg["uid"] and cfg["uid"] + 1 outside
WORKDIR = "/tmp"

_libc = ctypes.CDLL(None, use_errno=True)


class SetupError(Exception):
    pass


_preparing_program = False  # set in the program's process: errors from then on are not the kernel's


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def parse_args(args):
    """key=value arguments (ints but `workdir`); `expose=<dir>\t<path>\t<path>...` repeats."""
    cfg = {"expose": [], "workdir": None}
    for arg in args:
        key, _, value = arg.partition("=")
        if key == "expose":
            hidden, *paths = value.split("\t")
            cfg["expose"].append([hidden, paths])
        elif key == "workdir":
            cfg[key] = value
        else:
            cfg[key] = int(value)
    return cfg


def _check(rc, what):
    if rc != 0:
        err = ctypes.get_errno()
        raise SetupError(f"{what}: {os.strerror(err)} (errno {err})")


def _encode(text):
    return None if text is None else text.encode()


def _mount(source, target, fstype, flags, data=None):
    _check(_libc.mount(_encode(source), _encode(target), _encode(fstype), ctypes.c_ulong(flags), _encode(data)),
           f"mount {fstype or source} on {target}")


def _report(status_fd, line):
    try:
        os.write(status_fd, (line.replace("\n", " ") + "\n").encode())
    except OSError:
        pass


# ---- setup: namespaces and the filesystem view -------------------------------------------------

def _unshare_with_maps(uid, status_fd):
    """Enter new namespaces; a helper forked first writes this process's id maps from outside,
    which only a process with CAP_SETUID and CAP_SETGID there may do for ids other than its own."""
    go_r, go_w = os.pipe()
    helper = os.fork()
    if helper == 0:
        os.close(go_w)
        ok = os.read(go_r, 1) == b"u"
        try:
            if ok:
                for name in ("uid_map", "gid_map"):
                    with open(f"/proc/{os.getppid()}/{name}", "w") as f:
                        f.write(f"{ROOT_IN_NS} {uid} 1\n{PROGRAM_UID} {uid + 1} 1\n")
        except OSError as e:
            who = "" if os.geteuid() == 0 else f" (this process runs as uid {os.geteuid()}, not root)"
            _report(status_fd, f"unavailable writing the sandbox's id maps: {e}: mapping it onto unused uids "
                               f"needs root or CAP_SETUID and CAP_SETGID{who}")
            os._exit(1)
        os._exit(0 if ok else 1)
    os.close(go_r)
    flags = (CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
             | CLONE_NEWCGROUP)
    rc = _libc.unshare(ctypes.c_int(flags))
    err = ctypes.get_errno()
    os.write(go_w, b"u" if rc == 0 else b"x")
    os.close(go_w)
    _, status = os.waitpid(helper, 0)
    if rc != 0:
        raise SetupError(f"unshare: {os.strerror(err)} (errno {err}): the kernel refuses new user/network "
                         "namespaces here")
    if status != 0:
        raise SetupError("writing the id maps of the sandbox's user namespace failed")


def _become_ns_root():
    """The namespace's root (a mapped uid, so files it makes in tmpfs have an owner); capabilities
    inside the namespace only. Supplementary groups (the host's root group) go."""
    os.setgroups([])
    os.setresgid(ROOT_IN_NS, ROOT_IN_NS, ROOT_IN_NS)
    os.setresuid(ROOT_IN_NS, ROOT_IN_NS, ROOT_IN_NS)


def _no_nested_user_namespaces():
    """No user namespace may be made inside this one: the program cannot make one of its own to hold
    capabilities in (and reach the kernel code that needs them, netfilter and the like). The limit
    is this namespace's own (/proc/sys/user is per user namespace) and binds every one below it."""
    with open("/proc/sys/user/max_user_namespaces", "w") as f:
        f.write("0")


def _read_only_root():
    attr = _MountAttr(MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID, 0, MS_PRIVATE, 0)
    rc = _libc.syscall(ctypes.c_long(SYS_MOUNT_SETATTR), ctypes.c_int(AT_FDCWD), b"/",
                       ctypes.c_uint(AT_RECURSIVE), ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)))
    _check(rc, "mount_setattr (read-only /)")


def _expose(hidden, paths, fds):
    """Cover `hidden` (a directory others may not enter) with an empty read-only tmpfs that holds
    only `paths` (the interpreter's directories), bound in read-only from the real ones (`fds`,
    opened while this process could still enter `hidden`)."""
    _mount("tmpfs", hidden, "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,mode=0755")
    _bind_read_only(paths, fds)
    _mount(None, hidden, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _bind_read_only(paths, fds):
    for p, fd in zip(paths, fds):
        os.makedirs(p, mode=0o755, exist_ok=True)
        _mount(f"/proc/self/fd/{fd}", p, None, MS_BIND | MS_REC)
        _mount(None, p, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID)
        os.close(fd)


def _filesystem(cfg, exposed_fds):
    _read_only_root()
    under_workdir = []
    for (hidden, paths), fds in zip(cfg["expose"], exposed_fds):
        if hidden == WORKDIR:  # an interpreter under /tmp: bound in once the run's tmpfs covers it
            under_workdir.append((paths, fds))
        else:
            _expose(hidden, paths, fds)
    size = cfg["disk_bytes"]
    _mount("tmpfs", WORKDIR, "tmpfs", MS_NOSUID | MS_NODEV,
           f"size={size},nr_inodes=4096,mode=0700,uid={PROGRAM_UID},gid={PROGRAM_UID}")
    for paths, fds in under_workdir:
        _bind_read_only(paths, fds)
    _mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY, "size=4k,mode=0755")


# ---- init and the program ---------------------------------------------------------------------

def _limit(lim):
    cpu = lim["cpu_seconds"]
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))  # SIGXCPU, then SIGKILL a second later
    resource.setrlimit(resource.RLIMIT_AS, (lim["memory_bytes"],) * 2)
    resource.setrlimit(resource.RLIMIT_FSIZE, (lim["max_file_bytes"],) * 2)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lim["max_open_files"],) * 2)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if lim["sandboxed"]:
        # counted per (user namespace, uid) on Linux >= 5.14: this run's processes only. Set
        # here, after the namespace exists: the namespace's own ceiling is its creator's limit.
        resource.setrlimit(resource.RLIMIT_NPROC, (lim["max_processes"],) * 2)


def _become_program(cfg, status_fd):
    """In the program's process: drop privileges, write main.py, set limits. Returns main.py's path."""
    global _preparing_program
    _preparing_program = True
    if cfg["sandboxed"]:
        os.setsid()  # unsandboxed, run_python already started this process as a session leader
        os.setresgid(PROGRAM_UID, PROGRAM_UID, PROGRAM_UID)
        os.setresuid(PROGRAM_UID, PROGRAM_UID, PROGRAM_UID)  # from in-namespace root: every capability goes
        _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, ctypes.c_ulong(1), 0, 0, 0), "prctl(NO_NEW_PRIVS)")
        workdir = WORKDIR
    else:
        workdir = cfg["workdir"]
    os.chdir(workdir)
    os.environ.clear()  # what Python itself put there (LC_CTYPE): the program starts from a known one
    os.environ.update({"HOME": workdir, "TMPDIR": workdir, "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"})
    with os.fdopen(cfg["code_fd"], "rb") as f:
        code = f.read()
    path = os.path.join(workdir, "main.py")
    try:
        with open(path, "wb") as f:
            f.write(code)
    except OSError as e:
        raise SetupError(f"writing main.py ({len(code)} bytes) into the run's directory: {e} "
                         "(SandboxLimits.disk_mb bounds the directory)") from e
    _limit(cfg)
    os.close(status_fd)
    return path


def _init(cfg, status_fd):
    """pid 1 of the namespace: its own /proc, then the program; never returns in init."""
    _signal.signal(_signal.SIGTERM, _signal.SIG_DFL)
    _check(_libc.prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(_signal.SIGKILL), 0, 0, 0), "prctl(PDEATHSIG)")
    _signal.pthread_sigmask(_signal.SIG_UNBLOCK, {_signal.SIGTERM})  # setup held it over the fork
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    program = os.fork()
    if program == 0:
        return _become_program(cfg, status_fd)
    _, status, usage = os.wait4(program, 0)
    _report(status_fd, f"exit {status} {usage.ru_utime + usage.ru_stime:.3f}")
    os._exit(0)


def _setup(cfg, status_fd):
    """Namespaces and mounts, then init; returns only in the program's process."""
    _unshare_with_maps(cfg["uid"], status_fd)
    # opened in the new mount namespace (a bind's source must be in it) but as the caller's uid,
    # which may enter the directories the sandbox's uids may not
    exposed_fds = [[os.open(p, os.O_PATH | os.O_DIRECTORY) for p in paths] for _, paths in cfg["expose"]]
    _become_ns_root()
    _no_nested_user_namespaces()
    _filesystem(cfg, exposed_fds)
    init_pid = 0

    def kill_init(signum, frame):  # run_python's timeout and output cap land here
        if init_pid:
            os.kill(init_pid, _signal.SIGKILL)  # init's death takes the whole namespace with it
        else:
            os._exit(1)

    _signal.signal(_signal.SIGTERM, kill_init)
    # held over the fork: a SIGTERM between fork and the assignment would find no init to kill and
    # leave it running, not yet bound to this process by its parent-death signal
    _signal.pthread_sigmask(_signal.SIG_BLOCK, {_signal.SIGTERM})
    init_pid = os.fork()
    if init_pid == 0:
        return _init(cfg, status_fd)
    _signal.pthread_sigmask(_signal.SIG_UNBLOCK, {_signal.SIGTERM})
    os.close(cfg["code_fd"])
    os.waitpid(init_pid, 0)  # returns once the namespace is empty: init exits last
    os._exit(0)


def _start(cfg):
    """Returns main.py's path in the program's process; every other process exits in here."""
    status_fd = cfg["status_fd"]
    try:
        # run_python's thread waits on this process: a dead caller takes the run with it
        _check(_libc.prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(_signal.SIGKILL), 0, 0, 0), "prctl(PDEATHSIG)")
        os.set_inheritable(status_fd, False)  # no exec follows, but keep it out of the program's children
        if cfg["sandboxed"]:
            return _setup(cfg, status_fd)
        return _become_program(cfg, status_fd)
    except (SetupError, OSError, ValueError) as e:
        _report(status_fd, f"{'error' if _preparing_program else 'unavailable'} {e}")
        os._exit(126)


def _run_main(path, site_packages):
    """Run main.py as `python -I main.py` would (`-S` too unless site_packages), tracebacks from
    main.py on."""
    if site_packages:
        import site

        site.main()
    sys.argv = [path]
    main = type(sys)("__main__")  # a fresh module; `types` would be one more import
    main.__file__ = path
    main.__builtins__ = __builtins__
    sys.modules["__main__"] = main
    with open(path, "rb") as f:
        source = f.read()
    try:
        exec(compile(source, path, "exec"), main.__dict__)
    except SystemExit:
        raise
    except BaseException as e:
        import traceback

        tb = e.__traceback__.tb_next if e.__traceback__ is not None else None  # this frame is not the program's
        traceback.print_exception(type(e), e, tb)
        sys.stderr.flush()
        sys.exit(1)


if __name__ == "__main__":
    _config = parse_args(sys.argv[1:])
    _run_main(_start(_config), _config["site_packages"])
