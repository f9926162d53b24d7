//! Which mesh `vigil check`, `vigil stat` and `vigil tap` look at, found the same way for
//! all three: `--mesh` (or `VIGIL_MESH`) when given, else the mesh that `vigil up` or
//! `vigil demo` is running on this machine right now. A launcher records its mesh file,
//! data directory and pid in [`running_record_path`] while it runs; a record whose
//! process is gone is ignored, so a file left by an earlier run is never read by guess.
//! Every view prints what it read ([`MeshLocation::describe`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A mesh file and the data directory of the run it belongs to, and how they were found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MeshLocation {
    pub mesh_file: PathBuf,
    /// Where the run keeps its CA, logs and decision logs; unknown for a mesh file
    /// given with `--mesh` that no running launcher uses.
    pub data_dir: Option<PathBuf>,
    pub found_by: FoundBy,
}

/// How a [`MeshLocation`] was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FoundBy {
    /// `--mesh` or `VIGIL_MESH`.
    Flag,
    /// The running `vigil up` / `vigil demo`.
    RunningMesh,
}

impl MeshLocation {
    /// One line for people: `mesh: FILE (data: DIR; the running vigil demo/up)`.
    pub fn describe(&self) -> String {
        let data = self
            .data_dir
            .as_ref()
            .map_or("not known".to_string(), |d| d.display().to_string());
        let how = match self.found_by {
            FoundBy::Flag => "from --mesh",
            FoundBy::RunningMesh => "the running vigil up / vigil demo",
        };
        format!("mesh: {} (data: {data}; {how})", self.mesh_file.display())
    }
}

/// No mesh to look at, and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    #[error(
        "no --mesh given and no vigil up or vigil demo is running on this machine{stale}; \
         start one, or pass the mesh file of the running mesh with --mesh (or VIGIL_MESH)"
    )]
    NothingRunning { stale: String },
    #[error("mesh file {0} does not exist; pass the mesh file of the running mesh with --mesh")]
    Missing(PathBuf),
}

/// What a running launcher writes to [`running_record_path`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningMesh {
    pub mesh_file: PathBuf,
    pub data_dir: PathBuf,
    pub pid: u32,
}

/// Where the running launcher's record is kept: one per user's temporary directory.
pub fn running_record_path() -> PathBuf {
    std::env::temp_dir().join("vigil-running-mesh.json")
}

/// Records this process as the running mesh; the guard removes the record when dropped,
/// unless another launcher has replaced it since, and puts back the record it replaced
/// if that launcher still runs.
pub fn record_running(mesh_file: &Path, data_dir: &Path) -> RunningGuard {
    let absolute = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let record = RunningMesh {
        mesh_file: absolute(mesh_file),
        data_dir: absolute(data_dir),
        pid: std::process::id(),
    };
    let path = running_record_path();
    let previous = running_mesh(&path);
    if let Ok(json) = serde_json::to_string(&record) {
        // Written then renamed, so a reader never sees half a record.
        if let Err(e) = vigil_identity::write_atomic(&path, json.as_bytes(), 0o644) {
            tracing::warn!(path = %path.display(), error = %e, "cannot record the running mesh; vigil check/stat/tap will need --mesh");
        }
    }
    RunningGuard {
        path,
        record,
        previous,
    }
}

/// Removes the running-mesh record when the launcher ends.
pub struct RunningGuard {
    path: PathBuf,
    record: RunningMesh,
    previous: Option<RunningMesh>,
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        if read_record(&self.path).as_ref() != Some(&self.record) {
            return;
        }
        let back = self
            .previous
            .as_ref()
            .filter(|p| alive(p.pid))
            .and_then(|p| serde_json::to_string(p).ok());
        match back {
            Some(json) => {
                let _ = vigil_identity::write_atomic(&self.path, json.as_bytes(), 0o644);
            }
            None => {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

fn read_record(path: &Path) -> Option<RunningMesh> {
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

/// Whether `pid` is still a `vigil` process (not one that was given a recycled pid).
fn alive(pid: u32) -> bool {
    std::fs::read(Path::new("/proc").join(pid.to_string()).join("cmdline")).is_ok_and(|cmd| {
        let program = cmd.split(|b| *b == 0).next().unwrap_or_default();
        String::from_utf8_lossy(program).contains("vigil")
    })
}

/// The running mesh, if a live launcher recorded one at `record`.
pub fn running_mesh(record: &Path) -> Option<RunningMesh> {
    read_record(record).filter(|r| alive(r.pid))
}

/// The mesh to look at: `explicit` when given, else the running one.
pub fn locate(explicit: Option<PathBuf>) -> Result<MeshLocation, LocateError> {
    locate_with(explicit, &running_record_path())
}

/// [`locate`] with the record read from `record`.
pub fn locate_with(explicit: Option<PathBuf>, record: &Path) -> Result<MeshLocation, LocateError> {
    let running = running_mesh(record);
    match explicit {
        Some(mesh_file) => {
            if !mesh_file.exists() {
                return Err(LocateError::Missing(mesh_file));
            }
            // The data directory is known when the file is the running mesh's.
            let same = |r: &&RunningMesh| {
                std::fs::canonicalize(&mesh_file).is_ok_and(|m| m == r.mesh_file)
            };
            let data_dir = running.as_ref().filter(same).map(|r| r.data_dir.clone());
            Ok(MeshLocation {
                mesh_file,
                data_dir,
                found_by: FoundBy::Flag,
            })
        }
        None => match running {
            Some(r) if r.mesh_file.exists() => Ok(MeshLocation {
                mesh_file: r.mesh_file,
                data_dir: Some(r.data_dir),
                found_by: FoundBy::RunningMesh,
            }),
            _ => {
                let demo = crate::demo_mesh::mesh_path(&crate::demo_mesh::default_data_dir());
                let stale = if demo.exists() {
                    format!(
                        " ({} is left from an earlier demo, not read)",
                        demo.display()
                    )
                } else {
                    String::new()
                };
                Err(LocateError::NothingRunning { stale })
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_running_mesh_is_found_and_a_dead_ones_record_is_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let record = dir.path().join("record.json");
        let mesh = dir.path().join("mesh.yaml");
        std::fs::write(&mesh, "trust_domain: x\n").expect("mesh");
        let err = locate_with(None, &record).expect_err("nothing running");
        assert!(err.to_string().contains("--mesh"), "{err}");

        let live = RunningMesh {
            mesh_file: std::fs::canonicalize(&mesh).expect("canonical"),
            data_dir: dir.path().to_path_buf(),
            pid: std::process::id(),
        };
        std::fs::write(&record, serde_json::to_string(&live).expect("json")).expect("record");
        let found = locate_with(None, &record).expect("found");
        assert_eq!(found.found_by, FoundBy::RunningMesh);
        assert_eq!(found.mesh_file, live.mesh_file);
        assert_eq!(found.data_dir.as_deref(), Some(dir.path()));
        assert!(
            found.describe().contains("mesh.yaml"),
            "{}",
            found.describe()
        );
        // The same file by --mesh: the data directory of the run is known too.
        let flagged = locate_with(Some(mesh.clone()), &record).expect("flag");
        assert_eq!(flagged.found_by, FoundBy::Flag);
        assert_eq!(flagged.data_dir.as_deref(), Some(dir.path()));

        // A record whose launcher is gone is not followed.
        let dead = RunningMesh {
            pid: u32::MAX - 1,
            ..live
        };
        std::fs::write(&record, serde_json::to_string(&dead).expect("json")).expect("record");
        assert!(locate_with(None, &record).is_err());
        let missing =
            locate_with(Some(dir.path().join("nope.yaml")), &record).expect_err("missing file");
        assert!(missing.to_string().contains("nope.yaml"), "{missing}");
    }
}
