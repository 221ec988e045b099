//! Reservations that persist through power loss (SCSI APTPL, NVMe PTPL):
//! one JSON file per volume in the `[state] dir`, written atomically
//! (temporary file, fsync, rename over the old one, fsync of the
//! directory), so a crash at any point leaves either the old file or the
//! new one, never a torn one. A file that cannot be read back is an error at
//! start, naming the file: the server does not silently forget a fence.
//! The state without APTPL/PTPL has no file (it is removed when turned off).

use pinion_backends::resv::{Persist, Registrant, Registration, Reservation, ResvState, ResvType};
use pinion_backends::Volume;
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("reservation state directory {0}: {1}")]
    Dir(PathBuf, std::io::Error),
    #[error("reservation state {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("reservation state {0} is corrupt ({1}); refusing to start without it (move it away to drop the reservations)")]
    Corrupt(PathBuf, String),
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct File {
    version: u32,
    volume: String,
    generation: u32,
    registrations: Vec<Reg>,
    #[serde(default)]
    reservation: Option<Res>,
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
enum Who {
    Scsi { initiator: String, isid: String, tpgt: u16 },
    Nvme { hostid: String },
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct Reg {
    key: u64,
    who: Who,
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct Res {
    holder: Who,
    /// NVMe reservation type code (1 to 6).
    nvme_type: u8,
}

fn who(r: &Registrant) -> Who {
    match r {
        Registrant::Scsi { initiator, isid, tpgt } => Who::Scsi { initiator: initiator.clone(), isid: hex::encode(isid), tpgt: *tpgt },
        Registrant::Nvme { hostid } => Who::Nvme { hostid: hex::encode(hostid) },
    }
}

fn registrant(w: Who) -> Result<Registrant, String> {
    Ok(match w {
        Who::Scsi { initiator, isid, tpgt } => {
            let mut b = [0u8; 6];
            hex::decode_to_slice(&isid, &mut b).map_err(|e| format!("ISID {isid:?}: {e}"))?;
            Registrant::Scsi { initiator, isid: b, tpgt }
        }
        Who::Nvme { hostid } => {
            let mut b = [0u8; 16];
            hex::decode_to_slice(&hostid, &mut b).map_err(|e| format!("host ID {hostid:?}: {e}"))?;
            Registrant::Nvme { hostid: b }
        }
    })
}

fn encode(volume: &str, st: &ResvState) -> Vec<u8> {
    let f = File {
        version: VERSION,
        volume: volume.to_string(),
        generation: st.generation,
        registrations: st.regs.iter().map(|r| Reg { key: r.key, who: who(&r.who) }).collect(),
        reservation: st.res.as_ref().map(|r| Res { holder: who(&r.holder), nvme_type: r.ty.nvme() }),
    };
    let mut v = serde_json::to_vec_pretty(&f).expect("plain data serializes");
    v.push(b'\n');
    v
}

fn decode(volume: &str, bytes: &[u8]) -> Result<ResvState, String> {
    let f: File = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if f.version != VERSION {
        return Err(format!("version {} (this server reads {VERSION})", f.version));
    }
    if f.volume != volume {
        return Err(format!("it is volume {:?}'s, not {volume:?}'s", f.volume));
    }
    let mut regs: Vec<Registration> = Vec::new();
    for r in f.registrations {
        let who = registrant(r.who)?;
        if regs.iter().any(|x| x.who == who) {
            return Err(format!("{who:?} is registered twice"));
        }
        regs.push(Registration { key: r.key, who });
    }
    let res = match f.reservation {
        None => None,
        Some(r) => {
            let ty = ResvType::from_nvme(r.nvme_type).ok_or(format!("reservation type {}", r.nvme_type))?;
            let holder = registrant(r.holder)?;
            if !regs.iter().any(|x| x.who == holder) {
                return Err("the reservation holder is not registered".into());
            }
            Some(Reservation { holder, ty })
        }
    };
    Ok(ResvState { generation: f.generation, regs, res, aptpl: true })
}

/// The state file of one volume: the name, with anything but letters,
/// digits, `-`, `_` and `.` percent-encoded (and a leading dot too).
fn file_name(volume: &str) -> String {
    let mut s = String::new();
    for (i, b) in volume.bytes().enumerate() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || (b == b'.' && i > 0) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02x}"));
        }
    }
    s + ".resv.json"
}

/// Writes one volume's state file.
struct Store {
    dir: PathBuf,
    path: PathBuf,
    volume: String,
}

impl Store {
    fn sync_dir(&self) -> std::io::Result<()> {
        fs::File::open(&self.dir)?.sync_all()
    }
}

impl Persist for Store {
    fn save(&self, st: &ResvState) -> std::io::Result<()> {
        if !st.aptpl {
            match fs::remove_file(&self.path) {
                Ok(()) => return self.sync_dir(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        let tmp = self.path.with_extension("json.tmp");
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&encode(&self.volume, st))?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, &self.path)?;
        self.sync_dir()?;
        tracing::debug!(volume = %self.volume, path = %self.path.display(), generation = st.generation, "reservation state persisted");
        Ok(())
    }
}

/// Loads each volume's persisted reservations (if any) and makes its
/// reservations persist into `dir`. Any unreadable file fails the start.
pub fn attach(dir: &Path, volumes: &[Arc<Volume>]) -> Result<(), StoreError> {
    fs::create_dir_all(dir).map_err(|e| StoreError::Dir(dir.to_path_buf(), e))?;
    let mut loaded = Vec::new();
    for v in volumes {
        let path = dir.join(file_name(&v.name));
        let state = match fs::read(&path) {
            Ok(b) => Some(decode(&v.name, &b).map_err(|e| StoreError::Corrupt(path.clone(), e))?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(StoreError::Read(path, e)),
        };
        loaded.push((v, path, state));
    }
    // only once every file has been read: nothing is half restored
    for (v, path, state) in loaded {
        if let Some(s) = &state {
            tracing::info!(volume = %v.name, path = %path.display(), registrations = s.regs.len(), reserved = s.res.is_some(), "reservations restored");
        }
        v.resv.restore(state, Arc::new(Store { dir: dir.to_path_buf(), path, volume: v.name.clone() }));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ResvState {
        let a = Registrant::Scsi { initiator: "iqn.x:a".into(), isid: [0x40, 1, 2, 3, 4, 5], tpgt: 1 };
        let b = Registrant::Nvme { hostid: [7; 16] };
        let mut s = ResvState { aptpl: true, ..Default::default() };
        s.register(&a, 1);
        s.register(&b, u64::MAX);
        s.reserve(&b, ResvType::ExclusiveAccessRegistrantsOnly).unwrap();
        s
    }

    #[test]
    fn round_trips_and_refuses_damage() {
        let s = sample();
        let bytes = encode("v", &s);
        assert_eq!(decode("v", &bytes).unwrap(), s);
        assert!(decode("w", &bytes).is_err(), "another volume's file");
        assert!(decode("v", &bytes[..bytes.len() / 2]).is_err(), "truncated");
        let text = String::from_utf8(bytes).unwrap();
        assert!(decode("v", text.replace("\"nvme_type\": 4", "\"nvme_type\": 9").as_bytes()).is_err());
        assert!(decode("v", text.replace("\"version\": 1", "\"version\": 2").as_bytes()).is_err());
    }

    #[test]
    fn saves_atomically_and_removes_when_off() {
        let d = tempfile::tempdir().unwrap();
        let b: Arc<dyn pinion_backends::Backend> = Arc::new(pinion_backends::null::NullBackend::new(1 << 20, 4096));
        let v = Arc::new(Volume::new("a/b", b, pinion_backends::PagePool::new(0, false)));
        attach(d.path(), std::slice::from_ref(&v)).unwrap();
        let path = d.path().join("a%2fb.resv.json");
        let mut g = v.resv.change();
        *g = sample();
        g.commit().unwrap();
        assert_eq!(decode("a/b", &fs::read(&path).unwrap()).unwrap(), sample());
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1, "no temporary file left");
        // a restart reads it back
        let v2 = Arc::new(Volume::new("a/b", Arc::new(pinion_backends::null::NullBackend::new(1 << 20, 4096)), pinion_backends::PagePool::new(0, false)));
        attach(d.path(), std::slice::from_ref(&v2)).unwrap();
        assert_eq!(*v2.resv.lock(), sample());
        let mut g = v.resv.change();
        g.aptpl = false;
        g.commit().unwrap();
        assert!(!path.exists());
        // corrupt: refused, with the file named
        fs::write(&path, b"{").unwrap();
        let e = attach(d.path(), &[v2]).unwrap_err().to_string();
        assert!(e.contains("corrupt") && e.contains("a%2fb.resv.json"), "{e}");
    }
}
