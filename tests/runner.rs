//! The runner, for real: containers from the default busybox image (and from the umoci/skopeo
//! fixture images) on strata's own FUSE mount, checked from inside and from the host. Every
//! test has its own store; its guard removes its containers, mounts and processes.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::containers::{Containers, output_with_timeout};

fn lines(s: &str) -> Vec<&str> {
    s.lines().collect()
}

#[test]
fn streams_and_exit_codes_as_docker() {
    let t = Containers::new();
    let (code, out, err) = t.status(&[
        "run",
        "--rm",
        "busybox",
        "sh",
        "-c",
        "echo to-out; echo to-err >&2; exit 0",
    ]);
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (0, "to-out\n", "to-err\n")
    );
    for n in [1, 42] {
        let (code, _, _) = t.status(&["run", "--rm", "busybox", "sh", "-c", &format!("exit {n}")]);
        assert_eq!(code, n);
    }
    // A signal's death is 128+N.
    let (code, _, _) = t.status(&[
        "run",
        "--rm",
        "busybox",
        "sh",
        "-c",
        "sh -c 'kill -9 $$'; kill -9 $$ & wait; exit 137",
    ]);
    assert_eq!(code, 137);
    // 127: not found; 126: cannot be executed; 125: strata's own errors.
    let (code, _, err) = t.status(&["run", "--rm", "busybox", "no-such-command"]);
    assert_eq!(code, 127, "{err}");
    assert!(err.contains("executable file not found"), "{err}");
    let (code, _, _) = t.status(&["run", "--rm", "busybox", "/no/such/path"]);
    assert_eq!(code, 127);
    let (code, _, err) = t.status(&["run", "--rm", "busybox", "/etc/passwd"]);
    assert_eq!(code, 126, "{err}");
    let (code, _, _) = t.status(&["run", "--rm", "busybox", "/tmp"]);
    assert_eq!(code, 126);
    let (code, _, err) = t.status(&["run", "--rm", "no-such-image", "true"]);
    assert_eq!(code, 125, "{err}");
    let (code, _, _) = t.status(&["run", "--rm", "--network", "bogus", "busybox", "true"]);
    assert_eq!(code, 125);
    let (code, _, _) = t.status(&["run", "--rm", "--bogus-flag", "busybox", "true"]);
    assert_eq!(code, 125);
    let (code, _, _) = t.status(&["run", "--rm", "-u", "no-such-user", "busybox", "true"]);
    assert_eq!(code, 125);
    // stdin: only with -i.
    let o = t.run_in(
        &[
            "run",
            "--rm",
            "-i",
            "busybox",
            "sh",
            "-c",
            "tr a-z A-Z; echo done",
        ],
        Some(b"hello stdin\n"),
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout), "HELLO STDIN\ndone\n");
    let o = t.run_in(
        &["run", "--rm", "busybox", "sh", "-c", "cat; echo end"],
        Some(b"ignored\n"),
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout), "end\n");
    // Nothing of the --rm containers is left.
    assert_eq!(t.ok(&["ps", "-aq"]), "");
}

#[test]
fn image_config_is_honoured_and_overridden() {
    let t = Containers::new();
    t.ok(&[
        "import",
        "-c", r#"ENTRYPOINT ["/bin/sh", "-c", "echo \"$0 $FOO $(pwd) $(id -u):$(id -g) $HOME\"; exit 0"]"#,
        "-c", r#"CMD ["from-cmd"]"#,
        "-c", "ENV FOO=from-image",
        "-c", "ENV PATH=/bin",
        "-c", "WORKDIR /srv/app",
        "-c", "USER nobody",
        common::containers::default_image_tar().to_str().unwrap(),
        "cfg:1",
    ]);
    assert_eq!(
        t.ok(&["run", "--rm", "cfg:1"]),
        "from-cmd from-image /srv/app 65534:65534 /nonexistent\n"
    );
    assert_eq!(
        t.ok(&["run", "--rm", "cfg:1", "other-arg"]),
        "other-arg from-image /srv/app 65534:65534 /nonexistent\n"
    );
    let env_file = t.store.dir.path().join("env");
    fs::write(&env_file, "# a comment\nFOO=from-file\nBAR=2\n").unwrap();
    assert_eq!(
        t.ok(&[
            "run",
            "--rm",
            "--env-file",
            env_file.to_str().unwrap(),
            "-w",
            "/tmp",
            "-u",
            "0:0",
            "cfg:1",
            "x"
        ]),
        "x from-file /tmp 0:0 /root\n"
    );
    assert_eq!(
        t.ok(&[
            "run",
            "--rm",
            "--env-file",
            env_file.to_str().unwrap(),
            "-e",
            "FOO=from-flag",
            "cfg:1",
            "y"
        ]),
        "y from-flag /srv/app 65534:65534 /nonexistent\n"
    );
    // --entrypoint replaces the entrypoint and drops the image's Cmd.
    assert_eq!(
        t.ok(&["run", "--rm", "--entrypoint", "/bin/echo", "cfg:1"]),
        "\n"
    );
    assert_eq!(
        t.ok(&[
            "run",
            "--rm",
            "--entrypoint",
            "/bin/echo",
            "cfg:1",
            "a",
            "b"
        ]),
        "a b\n"
    );
    let out = t.ok(&["run", "--rm", "--entrypoint", "env", "cfg:1"]);
    for want in ["FOO=from-image", "PATH=/bin", "HOME=/nonexistent"] {
        assert!(out.lines().any(|l| l == want), "{want} missing in:\n{out}");
    }
    assert!(out.lines().any(|l| l.starts_with("HOSTNAME=")), "{out}");
    // Numeric users need no passwd entry; groups by name resolve in the container's files.
    assert_eq!(
        t.ok(&[
            "run",
            "--rm",
            "-u",
            "4242:nogroup",
            "busybox",
            "sh",
            "-c",
            "id -u; id -g"
        ]),
        "4242\n65534\n"
    );
}

/// An image from the umoci/skopeo fixtures (an OCI archive) runs too.
#[test]
fn fixture_images_run() {
    let t = Containers::new();
    let images = common::busybox_images();
    t.ok(&[
        "load",
        "-q",
        "-i",
        images.join("busybox.oci.tar").to_str().unwrap(),
    ]);
    t.ok(&[
        "load",
        "-q",
        "-i",
        images.join("busybox.tar").to_str().unwrap(),
    ]);
    let out = t.ok(&[
        "run",
        "--rm",
        "busybox:1.35",
        "sh",
        "-c",
        "echo $PATH; ls /bin/busybox",
    ]);
    assert_eq!(
        out,
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n/bin/busybox\n"
    );
}

#[test]
fn writes_land_in_the_containers_upper_only() {
    let t = Containers::new();
    t.ok(&[
        "run",
        "--name",
        "ca",
        "busybox",
        "sh",
        "-c",
        "echo a > /etc/mine; echo extra >> /etc/passwd; rm /bin/vi",
    ]);
    t.ok(&["run", "--name", "cb", "busybox", "sh", "-c", "test ! -e /etc/mine && test -e /bin/vi && ! grep -q extra /etc/passwd && echo b > /etc/mine"]);
    let ids = t.ok(&["ps", "-aq", "--no-trunc"]);
    let ids: Vec<&str> = ids.split_whitespace().collect();
    assert_eq!(ids.len(), 2);
    let mut seen = Vec::new();
    for id in ids {
        let upper = t.containers_dir().join(id).join("upper");
        seen.push(fs::read_to_string(upper.join("etc/mine")).unwrap());
    }
    seen.sort();
    assert_eq!(seen, ["a\n", "b\n"]);
    // The image's layer is untouched.
    let layers = fs::read_dir(t.root().join("layers"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect::<Vec<_>>();
    assert_eq!(layers.len(), 1);
    let diff = layers[0].join("diff");
    assert!(!diff.join("etc/mine").exists());
    assert!(diff.join("bin/vi").exists());
    assert!(
        !fs::read_to_string(diff.join("etc/passwd"))
            .unwrap()
            .contains("extra")
    );
    // A later container still sees the image as it was.
    t.ok(&[
        "run",
        "--rm",
        "busybox",
        "sh",
        "-c",
        "test ! -e /etc/mine && test -e /bin/vi",
    ]);
}

#[test]
fn rm_leaves_nothing_behind() {
    let t = Containers::new();
    t.ok(&["run", "--rm", "busybox", "sh", "-c", "echo x > /x"]);
    let (code, _, _) = t.status(&["run", "--rm", "busybox", "sh", "-c", "exit 3"]);
    assert_eq!(code, 3);
    let (code, _, _) = t.status(&["run", "--rm", "busybox", "no-such-command"]);
    assert_eq!(code, 127);
    let id = t.ok(&[
        "run",
        "-d",
        "--rm",
        "busybox",
        "sh",
        "-c",
        "sleep 0.3; exit 6",
    ]);
    assert_eq!(id.trim().len(), 64);
    // wait gives the code of a --rm container too (docker's wait on it).
    assert_eq!(t.ok(&["wait", id.trim()]), "6\n");
    assert!(t.wait_no_processes().is_empty());
    assert_eq!(t.ok(&["ps", "-aq"]), "");
    assert_eq!(fs::read_dir(t.containers_dir()).unwrap().count(), 0);
    assert!(t.mounts().is_empty(), "{:?}", t.mounts());

    // rm -f of a running container stops it.
    let id = t.ok(&["run", "-d", "--name", "long", "busybox", "sleep", "1000"]);
    let id = id.trim();
    assert!(t.ok(&["ps", "-q"]).contains(&id[..12]));
    let (code, _, err) = t.status(&["rm", "long"]);
    assert_eq!(code, 1);
    assert!(err.contains("running"), "{err}");
    assert_eq!(t.ok(&["rm", "-f", "long"]), "long\n");
    assert_eq!(t.ok(&["ps", "-aq"]), "");
    assert!(t.wait_no_processes().is_empty());
    assert!(t.mounts().is_empty());
    assert!(!t.containers_dir().join(id).exists());
}

#[test]
fn commit_then_run_sees_the_change_and_diff_lists_it() {
    let t = Containers::new();
    t.ok(&["run", "--name", "c1", "busybox", "sh", "-c",
        "mkdir -p /data/sub && echo hello > /data/sub/f && echo more >> /etc/group && rm /bin/vi && chmod 600 /etc/passwd && ln -s /data/sub/f /root/link"]);
    let diff = t.ok(&["diff", "c1"]);
    assert_eq!(
        lines(&diff),
        [
            "C /bin",
            "D /bin/vi",
            "A /data",
            "A /data/sub",
            "A /data/sub/f",
            "C /etc",
            "C /etc/group",
            "C /etc/passwd",
            "C /root",
            "A /root/link",
        ]
    );
    let id = t.ok(&["commit", "-m", "a message", "c1", "mine:v1"]);
    assert!(
        id.trim().starts_with("sha256:") && id.trim().len() == 71,
        "{id}"
    );
    let out = t.ok(&["run", "--rm", "mine:v1", "sh", "-c",
        "cat /data/sub/f /root/link; tail -1 /etc/group; test -e /bin/vi || echo no-vi; stat -c %a /etc/passwd; head -1 /etc/passwd"]);
    assert_eq!(
        out,
        "hello\nhello\nmore\nno-vi\n600\nroot:x:0:0:root:/root:/bin/sh\n"
    );
    let hist = t.ok(&["history", "--no-trunc", "mine:v1"]);
    assert!(
        hist.contains("strata commit c1") && hist.contains("a message"),
        "{hist}"
    );
    // The committed image keeps the container's command, as docker's.
    let cmd = t.ok(&["inspect", "-f", "{{json .Config.Cmd}}", "mine:v1"]);
    assert!(cmd.contains("mkdir -p /data/sub"), "{cmd}");
    // A container of the new image starts with an empty diff.
    t.ok(&["create", "--name", "c2", "mine:v1"]);
    assert_eq!(t.ok(&["diff", "c2"]), "");
    // export: the merged tree.
    let o = t.run(&["export", "c1"]);
    assert!(o.status.success());
    let mut ar = tar::Archive::new(&o.stdout[..]);
    let names: Vec<String> = ar
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert!(names.iter().any(|n| n == "data/sub/f"), "{names:?}");
    assert!(names.iter().any(|n| n == "bin/busybox"));
    assert!(!names.iter().any(|n| n == "bin/vi"));
}

#[test]
fn cp_in_and_out() {
    let t = Containers::new();
    let host = t.store.dir.path().join("host");
    fs::create_dir_all(host.join("tree/sub")).unwrap();
    fs::write(host.join("tree/sub/a"), "A").unwrap();
    fs::write(host.join("file"), "F").unwrap();
    t.ok(&[
        "create",
        "--name",
        "cc",
        "busybox",
        "sh",
        "-c",
        "cat /root/file /tmp/tree/sub/a; echo made > /root/out",
    ]);
    t.ok(&["cp", host.join("file").to_str().unwrap(), "cc:/root/"]);
    t.ok(&["cp", host.join("tree").to_str().unwrap(), "cc:/tmp/tree"]);
    assert_eq!(t.ok(&["start", "-a", "cc"]), "FA");
    // As docker: the parent of the destination must exist.
    let (code, _, _) = t.status(&[
        "cp",
        host.join("tree").to_str().unwrap(),
        "cc:/nonexistent/tree",
    ]);
    assert_eq!(code, 1);
    let back = t.store.dir.path().join("back");
    t.ok(&["cp", "cc:/root/out", back.to_str().unwrap()]);
    assert_eq!(fs::read_to_string(&back).unwrap(), "made\n");
    fs::create_dir_all(t.store.dir.path().join("outdir")).unwrap();
    t.ok(&[
        "cp",
        "cc:/tmp/tree",
        t.store.dir.path().join("outdir").to_str().unwrap(),
    ]);
    assert_eq!(
        fs::read_to_string(t.store.dir.path().join("outdir/tree/sub/a")).unwrap(),
        "A"
    );
    // A file of the image itself, and a path through a symlink of the container.
    t.ok(&[
        "cp",
        "cc:/etc/passwd",
        t.store.dir.path().join("pw").to_str().unwrap(),
    ]);
    assert!(
        fs::read_to_string(t.store.dir.path().join("pw"))
            .unwrap()
            .starts_with("root:")
    );
    let (code, _, _) = t.status(&[
        "cp",
        "cc:/no/such",
        t.store.dir.path().join("x").to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
}

#[test]
fn container_is_isolated_from_the_host() {
    let t = Containers::new();
    // A host file outside the root and its volumes.
    let secret_dir = t.store.dir.path().join("secret");
    fs::create_dir_all(&secret_dir).unwrap();
    fs::write(secret_dir.join("s"), "secret").unwrap();
    let s = secret_dir.display().to_string();
    let out = t.ok(&[
        "run",
        "--rm",
        "busybox",
        "sh",
        "-c",
        &format!("cat {s}/s 2>/dev/null || echo not-visible; ls / | tr '\\n' ' '"),
    ]);
    assert_eq!(
        out,
        "not-visible\nbin dev etc home proc root sys tmp usr var "
    );
    // Symlinks made by the container itself (and -v targets through them) stay inside.
    let vol = t.store.dir.path().join("vol");
    fs::create_dir_all(&vol).unwrap();
    fs::write(vol.join("v"), "vol").unwrap();
    t.ok(&[
        "create",
        "--name",
        "ll",
        "-v",
        &format!("{}:/etc/x", vol.display()),
        "busybox",
        "sh",
        "-c",
        &format!("cat /etc/x/v; readlink /etc/x; cat {s}/s 2>/dev/null || echo inside-only"),
    ]);
    // Plant /etc/x -> /../../../<secret dir> in the container's own layer, then run it.
    let links = t.store.dir.path().join("links");
    fs::create_dir_all(links.join("etc")).unwrap();
    std::os::unix::fs::symlink(format!("/../../..{s}"), links.join("etc/x")).unwrap();
    t.ok(&["cp", links.join("etc/x").to_str().unwrap(), "ll:/etc/x"]);
    let out = t.ok(&["start", "-a", "ll"]);
    assert_eq!(out, format!("vol/../../..{s}\ninside-only\n"));
    // The host directory the link names was not touched: the volume went inside the root.
    assert_eq!(fs::read_dir(&secret_dir).unwrap().count(), 1);
    assert!(fs::read_to_string(secret_dir.join("s")).unwrap() == "secret");
    // Volumes: read-write and read-only.
    let out = t.ok(&[
        "run",
        "--rm",
        "-v",
        &format!("{}:/data", vol.display()),
        "-v",
        &format!("{}:/ro:ro", vol.display()),
        "busybox",
        "sh",
        "-c",
        "echo w > /data/w; cat /ro/v; echo x > /ro/x 2>/dev/null || echo ro-refused",
    ]);
    assert_eq!(out, "volro-refused\n");
    assert_eq!(fs::read_to_string(vol.join("w")).unwrap(), "w\n");
    let (code, _, _) = t.status(&[
        "run",
        "--rm",
        "-v",
        "/nonexistent-src:/x",
        "busybox",
        "true",
    ]);
    assert_eq!(code, 125);
}

#[test]
fn container_sees_its_own_pid_1_hostname_and_a_read_only_root() {
    let t = Containers::new();
    let out = t.ok(&["run", "--rm", "--hostname", "box1", "busybox", "sh", "-c",
        "echo $$; hostname; cat /etc/hostname; cat /proc/1/cmdline | tr '\\0' ' '; echo; ps -o pid | wc -l"]);
    assert_eq!(
        lines(&out)[..4],
        [
            "1",
            "box1",
            "box1",
            "sh -c echo $$; hostname; cat /etc/hostname; cat /proc/1/cmdline | tr '\\0' ' '; echo; ps -o pid | wc -l "
        ]
    );
    // The header, its first process, ps and wc: nothing of the host.
    assert_eq!(lines(&out)[4].trim(), "4");
    // Default hostname: the short id.
    let id = t.ok(&["create", "busybox", "hostname"]);
    assert_eq!(
        t.ok(&["start", "-a", id.trim()]),
        format!("{}\n", &id.trim()[..12])
    );
    // --read-only: no writes, no remount read-write (no CAP_SYS_ADMIN).
    let out = t.ok(&["run", "--rm", "--read-only", "busybox", "sh", "-c",
        "touch /x 2>/dev/null || echo ro; mount -o remount,rw / 2>/dev/null || echo no-remount; touch /x 2>/dev/null || echo still-ro; echo tmp > /dev/shm/ok && echo shm-ok"]);
    assert_eq!(out, "ro\nno-remount\nstill-ro\nshm-ok\n");
    // /proc fresh, /dev minimal, /sys read-only, docker's masks and default capabilities.
    let out = t.ok(&["run", "--rm", "busybox", "sh", "-c",
        "ls /dev | tr '\\n' ' '; echo; test -c /dev/null && echo null-chr; wc -c < /proc/keys; \
         echo 1 > /proc/sysrq-trigger 2>/dev/null || echo sysrq-ro; echo x > /proc/sys/kernel/hostname 2>/dev/null || echo sys-ro; \
         touch /sys/x 2>/dev/null || echo sysfs-ro; grep -E 'CapEff|NoNewPrivs' /proc/self/status | tr -s '\\t ' ' '"]);
    assert_eq!(
        out,
        "core fd full null ptmx pts random shm stderr stdin stdout tty urandom zero \nnull-chr\n0\nsysrq-ro\nsys-ro\nsysfs-ro\nCapEff: 00000000a00425fb\nNoNewPrivs: 1\n"
    );
    let out = t.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "busybox",
        "sh",
        "-c",
        "ls /sys/class/net | tr '\\n' ' '",
    ]);
    assert_eq!(out, "lo ");
    // The root is strata's own union mount.
    let out = t.ok(&[
        "run",
        "--rm",
        "busybox",
        "head",
        "-1",
        "/proc/self/mountinfo",
    ]);
    assert!(
        out.contains(" / / ") && out.contains("strata-container:"),
        "{out}"
    );
}

#[test]
fn detached_container_lifecycle() {
    let t = Containers::new();
    let start = Instant::now();
    let id = t.ok(&["run", "-d", "--name", "web", "busybox", "sh", "-c",
        "echo out; echo err >&2; trap 'echo got-term; exit 3' TERM; while true; do sleep 0.05; done"]);
    assert!(start.elapsed() < Duration::from_secs(5));
    let id = id.trim().to_string();
    assert_eq!(id.len(), 64);
    std::thread::sleep(Duration::from_millis(300));
    let ps = t.ok(&["ps"]);
    let l = lines(&ps);
    assert_eq!(l.len(), 2, "{ps}");
    assert!(l[0].starts_with("CONTAINER ID   IMAGE     COMMAND"), "{ps}");
    assert!(
        l[1].starts_with(&id[..12]) && l[1].contains(" Up ") && l[1].ends_with("web"),
        "{ps}"
    );
    assert!(l[1].contains("\"sh -c echo out; ech…\""), "{ps}");
    let o = t.run(&["logs", "web"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&o.stderr), "err\n");
    // exec joins its namespaces.
    let out = t.ok(&[
        "exec",
        "web",
        "sh",
        "-c",
        "cat /proc/1/cmdline | head -c 5; echo; hostname",
    ]);
    assert_eq!(out, format!("sh\0-c\n{}\n", &id[..12]));
    let (code, _, _) = t.status(&["exec", "web", "sh", "-c", "exit 7"]);
    assert_eq!(code, 7);
    let (code, _, _) = t.status(&["exec", "web", "nope"]);
    assert_eq!(code, 127);
    let o = t.run_in(&["exec", "-i", "web", "cat"], Some(b"piped"));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "piped");
    // stop: SIGTERM reaches the trap; wait gives the code.
    assert_eq!(t.ok(&["stop", "web"]), "web\n");
    assert_eq!(t.ok(&["wait", "web"]), "3\n");
    assert!(t.ok(&["ps", "-a"]).contains("Exited (3)"));
    assert!(t.ok(&["logs", "web"]).contains("got-term"));
    assert!(t.mounts().is_empty());
    let (code, _, _) = t.status(&["exec", "web", "true"]);
    assert_ne!(code, 0);
    // start again (mounts again), kill with a signal, restart.
    assert_eq!(t.ok(&["start", "web"]), "web\n");
    assert!(t.ok(&["ps"]).contains(" Up "));
    assert_eq!(t.ok(&["kill", "-s", "KILL", "web"]), "web\n");
    assert_eq!(t.ok(&["wait", "web"]), "137\n");
    assert_eq!(t.ok(&["restart", "-t", "1", "web"]), "web\n");
    assert!(t.ok(&["ps", "-q"]).trim() == &id[..12]);
    // stop -t: a command that ignores SIGTERM is killed after the timeout.
    let _ = t.ok(&[
        "run", "-d", "--name", "stubborn", "busybox", "sleep", "1000",
    ]);
    let s = Instant::now();
    t.ok(&["stop", "-t", "1", "stubborn"]);
    assert!(s.elapsed() >= Duration::from_millis(900));
    assert_eq!(t.ok(&["wait", "stubborn"]), "137\n");
    t.ok(&["rm", "-f", "web", "stubborn"]);
    assert!(t.wait_no_processes().is_empty());
}

#[test]
fn state_survives_strata_and_a_reboot_like_restart() {
    let t = Containers::new();
    assert_eq!(
        t.status(&["run", "--name", "done", "busybox", "sh", "-c", "exit 5"])
            .0,
        5
    );
    t.ok(&[
        "run",
        "-d",
        "--name",
        "up",
        "busybox",
        "sh",
        "-c",
        "echo persisted > /keep; sleep 1000",
    ]);
    std::thread::sleep(Duration::from_millis(200));
    // The machine "restarts": every process of the store dies, every mount goes.
    for pid in t.processes() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    assert!(t.wait_no_processes().is_empty());
    for m in t.mounts() {
        nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH).unwrap();
    }
    let ps = t.ok(&["ps", "-a", "--format", "{{.Names}} {{.Status}}"]);
    let mut l = lines(&ps);
    l.sort();
    assert_eq!(l.len(), 2);
    assert!(l[0].starts_with("done Exited (5)"), "{ps}");
    assert!(l[1].starts_with("up Exited ("), "{ps}");
    assert_eq!(t.ok(&["ps", "-q"]), "");
    // start mounts it again, with its upper layer.
    t.ok(&["start", "up"]);
    assert_eq!(t.ok(&["exec", "up", "cat", "/keep"]), "persisted\n");
    t.ok(&["rm", "-f", "up"]);
    assert_eq!(t.status(&["start", "-a", "done"]).0, 5);
    assert_eq!(
        t.ok(&["ps", "-a", "--format", "{{.Names}} {{.Status}}"])
            .lines()
            .next()
            .unwrap()
            .split(' ')
            .take(3)
            .collect::<Vec<_>>(),
        ["done", "Exited", "(5)"]
    );
}

#[test]
fn signals_reach_the_container_and_children_are_reaped() {
    let t = Containers::new();
    let mut c = t.cmd();
    c.args([
        "run",
        "--rm",
        "busybox",
        "sh",
        "-c",
        "trap 'echo got-term; exit 9' TERM; echo ready; while true; do sleep 0.05; done",
    ]);
    c.stdout(std::process::Stdio::piped())
        .stdin(std::process::Stdio::null());
    let mut child = c.spawn().unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut buf = [0u8; 6];
    std::io::Read::read_exact(&mut out, &mut buf).unwrap();
    assert_eq!(&buf, b"ready\n");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let st = child.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert_eq!(rest, "got-term\n");
    assert_eq!(st.code(), Some(9));
    // The container's orphans are its PID 1's to reap (as docker without --init); the
    // monitor reaps the container's process: nothing is left of it.
    let out = t.ok(&[
        "run",
        "--rm",
        "busybox",
        "sh",
        "-c",
        "(sleep 0.1 &) ; sleep 0.3; ps -o stat | grep -c Z || true",
    ]);
    assert_eq!(out.trim(), "0");
    assert!(t.wait_no_processes().is_empty());
}

#[test]
fn tty_is_a_real_terminal_with_the_window_size() {
    if Path::new("/usr/bin/script").metadata().is_err() {
        eprintln!("no script(1): skipped");
        return;
    }
    let t = Containers::new();
    let bin = common::strata_bin();
    let cmdline = format!(
        "stty rows 45 cols 123; {} --root {} run --rm -t busybox sh -c 'test -t 0 && test -t 1 && echo both-tty; tty; stty size; exit 4'",
        bin.display(),
        t.root().display()
    );
    let mut c = std::process::Command::new("script");
    c.args(["-qec", &cmdline, "/dev/null"]);
    let o = output_with_timeout(c, None, Duration::from_secs(30));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("both-tty"), "{out}");
    assert!(out.contains("45 123"), "{out}");
    // The terminal is one of the container's own devpts, as docker's.
    assert!(out.contains("/dev/pts/0"), "{out}");
    assert_eq!(o.status.code(), Some(4), "{out}");
    // SIGWINCH: a new size of strata's terminal reaches the container's.
    let cmdline = format!(
        "stty rows 45 cols 123; {} --root {} run --rm -t busybox sh -c 'sleep 1; stty size' </dev/tty & sleep 0.4; stty rows 22 cols 99; kill -WINCH $!; wait $!",
        bin.display(),
        t.root().display()
    );
    let mut c = std::process::Command::new("script");
    c.args(["-qec", &cmdline, "/dev/null"]);
    let o = output_with_timeout(c, None, Duration::from_secs(30));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("22 99"), "{out}");
    // Without a terminal of its own, -t still gives the container one.
    let out = t.ok(&[
        "run",
        "--rm",
        "-t",
        "busybox",
        "sh",
        "-c",
        "test -t 1 && echo tty",
    ]);
    assert_eq!(out.replace('\r', ""), "tty\n");
}

#[test]
fn twenty_containers_at_once_from_one_image() {
    let t = Containers::new();
    let n = 20;
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let mut c = t.cmd();
            c.args([
                "run",
                "--name",
                &format!("c{i}"),
                "busybox",
                "sh",
                "-c",
                &format!(
                    "echo {i} > /mine; sleep 0.5; ls /mine* | wc -l; cat /mine; hostname | wc -c"
                ),
            ]);
            std::thread::spawn(move || output_with_timeout(c, None, Duration::from_secs(90)))
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let o = h.join().unwrap();
        assert!(
            o.status.success(),
            "c{i}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&o.stdout), format!("1\n{i}\n13\n"));
    }
    let ps = t.ok(&["ps", "-a", "--format", "{{.Names}} {{.Status}}"]);
    assert_eq!(ps.lines().filter(|l| l.contains("Exited (0)")).count(), n);
    assert!(t.mounts().is_empty());
    let entries: Vec<_> = fs::read_dir(t.containers_dir())
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(entries.len(), n);
    for e in entries {
        let upper = e.path().join("upper");
        let names: Vec<_> = fs::read_dir(&upper)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, ["mine"]);
        assert_eq!(
            fs::metadata(upper.join("mine"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o644
        );
    }
}

#[test]
fn inspect_shows_a_container_as_docker() {
    let t = Containers::new();
    let (code, _, _) = t.status(&[
        "run",
        "--name",
        "probe",
        "-e",
        "FOO=bar",
        "-v",
        "/etc:/hostetc:ro",
        "busybox",
        "sh",
        "-c",
        "exit 3",
    ]);
    assert_eq!(code, 3);
    let doc: serde_json::Value = serde_json::from_str(&t.ok(&["inspect", "probe"])).unwrap();
    let c = &doc[0];
    assert_eq!(c["Id"].as_str().unwrap().len(), 64);
    assert_eq!(c["Name"], "/probe");
    assert_eq!(c["Path"], "sh");
    assert_eq!(c["Args"], serde_json::json!(["-c", "exit 3"]));
    assert_eq!(c["State"]["Status"], "exited");
    assert_eq!(c["State"]["Running"], false);
    assert_eq!(c["State"]["ExitCode"], 3);
    assert!(
        c["Config"]["Env"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("FOO=bar"))
    );
    assert_eq!(c["Config"]["Image"], "busybox");
    assert_eq!(c["Mounts"][0]["Destination"], "/hostetc");
    assert_eq!(c["Mounts"][0]["RW"], false);
    let upper = c["GraphDriver"]["Data"]["UpperDir"].as_str().unwrap();
    assert!(std::path::Path::new(upper).is_dir(), "{upper}");
    // A template, and an image still inspects as an image.
    let f = t.ok(&[
        "inspect",
        "-f",
        "{{.State.Status}} {{.State.ExitCode}}",
        "probe",
    ]);
    assert_eq!(f.trim(), "exited 3");
    let img: serde_json::Value = serde_json::from_str(&t.ok(&["inspect", "busybox"])).unwrap();
    assert!(img[0]["RootFS"]["Layers"].is_array());
    t.ok(&["rm", "probe"]);
}

#[test]
fn mount_of_a_container_is_read_write_and_gives_way_to_start() {
    let t = Containers::new();
    t.ok(&["create", "--name", "m1", "busybox", "cat", "/hello"]);
    let m = t.ok(&["mount", "m1"]);
    let m = Path::new(m.trim());
    assert!(t.mounts().iter().any(|l| l.contains(&*m.to_string_lossy())));
    fs::write(m.join("hello"), "from the host\n").unwrap();
    // The same mount point again, and it is listed.
    assert_eq!(t.ok(&["mount", "m1"]).trim(), m.to_string_lossy());
    assert!(t.ok(&["mount"]).contains(&*m.to_string_lossy()));
    // start takes the container's union over and sees the write.
    let (code, out, err) = t.status(&["start", "-a", "m1"]);
    assert_eq!((code, out.as_str()), (0, "from the host\n"), "{err}");
    t.ok(&["mount", "m1"]);
    t.ok(&["umount", "m1"]);
    assert!(!t.mounts().iter().any(|l| l.contains(&*m.to_string_lossy())));
    // The write stays in the container's upper layer.
    let diff = t.ok(&["diff", "m1"]);
    assert!(diff.lines().any(|l| l == "A /hello"), "{diff}");
    t.ok(&["rm", "m1"]);
}

#[test]
fn device_nodes_and_the_host_terminal_stay_out_of_reach() {
    let t = Containers::new();
    // No CAP_MKNOD (strata sets up no device cgroup to make it safe, as docker's does).
    let (code, out, _) = t.status(&["run", "--rm", "busybox", "sh", "-c", "mknod /x c 1 3 2>&1"]);
    assert_ne!(code, 0);
    assert!(out.contains("Operation not permitted"), "{out}");
    // A device node in the container's union (as an image could ship one) cannot be opened.
    t.ok(&[
        "create",
        "--name",
        "dev",
        "busybox",
        "sh",
        "-c",
        "echo x > /hostnull && echo opened",
    ]);
    let m = t.ok(&["mount", "dev"]);
    let node = Path::new(m.trim()).join("hostnull");
    let st = std::process::Command::new("mknod")
        .arg(&node)
        .args(["c", "1", "3"])
        .status()
        .unwrap();
    assert!(st.success());
    let (code, out, err) = t.status(&["start", "-a", "dev"]);
    assert_ne!(code, 0, "{out}");
    assert!(!out.contains("opened"), "{out}");
    assert!(err.contains("Permission denied"), "{err}");
    t.ok(&["rm", "dev"]);
    // Without -t the container is not in the session of strata's terminal (no TIOCSTI into
    // the user's shell): no controlling terminal (tty_nr 0 in /proc/self/stat).
    if Path::new("/usr/bin/script").metadata().is_ok() {
        let cmdline = format!(
            "{} --root {} run --rm busybox sh -c 'echo tty_nr=$(cut -d\" \" -f7 /proc/self/stat)'",
            common::strata_bin().display(),
            t.root().display()
        );
        let mut c = std::process::Command::new("script");
        c.args(["-qec", &cmdline, "/dev/null"]);
        let o = output_with_timeout(c, None, Duration::from_secs(30));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains("tty_nr=0"), "{out}");
    }
}

/// Unmounts a test's own mount when dropped.
struct Unmount(std::path::PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn read_only_volumes_are_read_only_all_the_way_down() {
    let t = Containers::new();
    let host = tempfile::tempdir().unwrap();
    let sub = host.path().join("sub");
    fs::create_dir(&sub).unwrap();
    let st = std::process::Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=1m",
            "strata-test",
            sub.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(st.success());
    let _u = Unmount(sub.clone());
    let vol = format!("{}:/data:ro", host.path().display());
    let out = t.ok(&["run", "--rm", "-v", &vol, "busybox", "sh", "-c",
        "touch /data/top 2>/dev/null || echo top-ro; touch /data/sub/below 2>/dev/null || echo below-ro"]);
    assert_eq!(out, "top-ro\nbelow-ro\n");
    assert!(!sub.join("below").exists());
}

#[test]
fn rm_cleans_up_after_a_start_that_fails_early() {
    let t = Containers::new();
    // The union cannot be mounted: the image's layer directory is gone.
    let layers = t.root().join("layers");
    let layer = fs::read_dir(&layers)
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    let aside = t.root().join("layer-aside");
    fs::rename(&layer, &aside).unwrap();
    let (code, _, err) = t.status(&["run", "--rm", "busybox", "true"]);
    fs::rename(&aside, &layer).unwrap();
    assert_eq!(code, 125, "{err}");
    assert_eq!(
        t.ok(&["ps", "-a", "-q"]),
        "",
        "--rm left a container behind"
    );
}

#[test]
fn wait_on_a_created_container_blocks_until_it_has_run() {
    let t = Containers::new();
    t.ok(&["create", "--name", "later", "busybox", "sh", "-c", "exit 5"]);
    let mut waiter = t
        .cmd()
        .args(["wait", "later"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(400));
    assert!(
        waiter.try_wait().unwrap().is_none(),
        "wait returned before the container ran"
    );
    let (code, _, _) = t.status(&["start", "-a", "later"]);
    assert_eq!(code, 5);
    let deadline = Instant::now() + Duration::from_secs(10);
    while waiter.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = waiter.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "5");
    t.ok(&["rm", "later"]);
}
