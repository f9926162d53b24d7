//! `write_atomic` gives a file exactly the mode asked for, whatever the process's umask: an
//! installed CNI plugin must stay executable by the container runtime, a trust bundle
//! readable by every workload, a key readable by its owner alone. The only test of its
//! binary, since the umask belongs to the whole process.

use std::os::unix::fs::PermissionsExt;

use nix::sys::stat::{umask, Mode};

#[test]
fn a_file_gets_the_mode_asked_for_whatever_the_umask() {
    umask(Mode::from_bits_truncate(0o077));
    let dir = tempfile::tempdir().expect("temp dir");
    let files = [
        ("vigil-cni", 0o755),
        ("bundle.pem", 0o644),
        ("key.pem", 0o600),
    ];
    for (name, mode) in files {
        let path = dir.path().join(name);
        std::fs::write(&path, b"old").expect("an earlier version");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        vigil_identity::write_atomic(&path, b"new", mode).expect("written");
        assert_eq!(std::fs::read(&path).expect("read"), b"new", "{name}");
        let written = std::fs::metadata(&path)
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(written & 0o777, mode, "{name}: mode {written:o}");
    }
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(left.len(), files.len(), "no temporary file left: {left:?}");
}
