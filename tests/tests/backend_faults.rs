//! Backend faults against the real `pinion` binary, made by the kernel, not
//! mocked: each test builds its storage (a small tmpfs, an ext4 file system
//! on a loop device, a loop device as a block volume), starts the server on
//! it, breaks the storage the way it breaks in the field, and checks that
//! NVMe/TCP and iSCSI each answer with the status the specs name, that the
//! same connection then still serves the rest (other ranges, another
//! volume), and that the server neither panics nor exits.
//!
//! | fault                         | NVMe status                     | SCSI sense                       |
//! |-------------------------------|---------------------------------|----------------------------------|
//! | ENOSPC (full file system)     | Capacity Exceeded (0x81), DNR   | DATA PROTECT 27/07               |
//! | EIO (ext4 shut down), read    | Unrecovered Read Error (0x281)  | MEDIUM ERROR 11/00               |
//! | EIO, write                    | Write Fault (0x280)             | MEDIUM ERROR 0C/00               |
//! | EROFS (ext4 read-only after an error) | Namespace Is Write Protected (0x20), DNR | DATA PROTECT 27/00 |
//! | block device gone (capacity 0)| Namespace Not Ready (0x82), DNR | NOT READY 08/00                  |
//!
//! The fixtures need root (mount, losetup); without it each test says so
//! and passes without running (CI runs as root). Build the server first:
//! `cargo build -p pinion-target` (or set `PINION_BIN`).

use nvme_types::{Cqe, Status};
use pinion_tests::host::{Digests, Queue, CNTLID_DYNAMIC, HOSTID, HOSTNQN};
use pinion_tests::iscsi_host::{rw16, LoginOpts, ScsiResult, Session};
use pinion_tests::server::Server;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const NQN: &str = "nqn.2026-11.io.pinion:faults";
const IQN: &str = "iqn.2026-11.io.pinion:faults";
const BS: u32 = 4096;

/// NVMe namespace 1 / iSCSI LUN 0: the volume under test (`{VOLUME}`);
/// namespace 2 / LUN 1: a healthy RAM volume that must be unaffected.
const CONFIG: &str = r#"
[nvme_tcp]
listen = ["127.0.0.1:{PORT}"]

[iscsi]
listen = ["127.0.0.1:{ISCSI_PORT}"]
nop_interval = 0

[log]
level = "info"

[[volume]]
name = "faulty"
{VOLUME}
block_size = 4096

[[volume]]
name = "healthy"
backend = "ram"
size = "16MiB"
block_size = 4096

[[subsystem]]
nqn = "nqn.2026-11.io.pinion:faults"
namespaces = ["faulty", "healthy"]
hosts = ["*"]

[[iscsi_target]]
iqn = "iqn.2026-11.io.pinion:faults"
luns = ["faulty", "healthy"]
"#;

// ---- fixtures ---------------------------------------------------------------

fn is_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

/// Skips the test (returns) unless running as root.
macro_rules! need_root {
    () => {
        if !is_root() {
            eprintln!("backend fault tests need root (mount, losetup): not run");
            return;
        }
    };
}

#[track_caller]
fn run(cmd: &[&str]) -> String {
    let out = Command::new(cmd[0]).args(&cmd[1..]).output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{cmd:?} failed ({}): {text}{}", out.status, String::from_utf8_lossy(&out.stderr));
    text
}

/// A file system mounted on a fresh directory for the test; unmounted on
/// drop (after the server, which is declared later, has let go of it).
struct Mount {
    dir: tempfile::TempDir,
}

impl Mount {
    /// A tmpfs of `size` (e.g. "4M").
    fn tmpfs(size: &str) -> Mount {
        let dir = tempfile::Builder::new().prefix("pinion-fault-tmpfs-").tempdir().unwrap();
        run(&["mount", "-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs", &dir.path().display().to_string()]);
        Mount { dir }
    }

    /// A 32 MiB ext4 file system on a loop device (`errors=remount-ro`: an
    /// error turns it read-only, as a default ext4 mount does).
    fn ext4(image_dir: &Path) -> Mount {
        let img = image_dir.join("ext4.img");
        std::fs::File::create(&img).unwrap().set_len(32 << 20).unwrap();
        run(&["mkfs.ext4", "-q", "-F", &img.display().to_string()]);
        let dir = tempfile::Builder::new().prefix("pinion-fault-ext4-").tempdir().unwrap();
        run(&["mount", "-o", "loop,errors=remount-ro", &img.display().to_string(), &dir.path().display().to_string()]);
        Mount { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The block device behind the mount, e.g. "loop3".
    fn device_name(&self) -> String {
        let src = run(&["findmnt", "-n", "-o", "SOURCE", &self.path().display().to_string()]);
        src.trim().rsplit('/').next().unwrap().to_string()
    }

    /// EIO from now on for every read and write of every file in it
    /// (FS_IOC_SHUTDOWN, without flushing the log: as if the disk died).
    fn shut_down(&self) {
        let script = "import fcntl, os, struct, sys\n\
                      fd = os.open(sys.argv[1], os.O_RDONLY)\n\
                      fcntl.ioctl(fd, 0x8004587d, struct.pack('I', 2))\n";
        run(&["python3", "-c", script, &self.path().display().to_string()]);
    }

    /// Reports a file system error, which with `errors=remount-ro` makes
    /// the file system read-only: writes get EROFS, reads still work.
    fn trigger_error(&self) {
        let f = format!("/sys/fs/ext4/{}/trigger_fs_error", self.device_name());
        std::fs::write(&f, "pinion fault test\n").unwrap_or_else(|e| panic!("{f}: {e}"));
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let p = self.path().display().to_string();
        let ok = Command::new("umount").arg(&p).status().map(|s| s.success()).unwrap_or(false);
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&p).status();
        }
    }
}

/// A loop device over a file; detached on drop.
struct Loop {
    dev: String,
    backing: PathBuf,
}

impl Loop {
    fn new(backing: PathBuf, size: u64) -> Loop {
        std::fs::File::create(&backing).unwrap().set_len(size).unwrap();
        let dev = run(&["losetup", "-f", "--show", &backing.display().to_string()]).trim().to_string();
        Loop { dev, backing }
    }

    /// The device loses all its blocks, as a removed disk does: the kernel
    /// sets a dead disk's capacity to 0 while open fds stay valid.
    fn vanish(&self) {
        std::fs::File::options().write(true).open(&self.backing).unwrap().set_len(0).unwrap();
        run(&["losetup", "-c", &self.dev]);
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

// ---- hosts ------------------------------------------------------------------

fn start(volume_toml: &str) -> Server {
    Server::start(&CONFIG.replace("{VOLUME}", volume_toml))
}

/// Status code, type and DNR (not More).
fn status(c: &Cqe) -> Status {
    Status(c.status().0 & (0x7ff | Status::DNR))
}

#[track_caller]
fn assert_status(c: &Cqe, want: Status, what: &str) {
    assert_eq!(status(c), want, "{what}: got {:?}", c.status());
}

/// An NVMe/TCP controller of the test subsystem: admin queue (kept for
/// keep-alive) and one I/O queue.
struct Nvme {
    _admin: Queue,
    io: Queue,
}

fn nvme(s: &Server) -> Nvme {
    let none = Digests { header: false, data: false };
    let mut admin = Queue::connect(s.addr, none).expect("admin TCP connect");
    let c = admin.fabrics_connect(0, 31, 30_000, CNTLID_DYNAMIC, NQN, HOSTNQN, HOSTID, 0).expect("admin Connect");
    assert!(c.status().is_success(), "admin Connect: {:?}", c.status());
    let cntlid = c.result.get() as u16;
    admin.enable_controller().expect("enable controller");
    let mut io = Queue::connect(s.addr, none).expect("I/O TCP connect");
    let c = io.fabrics_connect(1, 31, 0, cntlid, NQN, HOSTNQN, HOSTID, 0).expect("I/O Connect");
    assert!(c.status().is_success(), "I/O Connect: {:?}", c.status());
    io.set_block_size(1, BS);
    io.set_block_size(2, BS);
    Nvme { _admin: admin, io }
}

impl Nvme {
    fn write(&mut self, nsid: u32, lba: u64, data: &[u8]) -> Cqe {
        self.io.write(nsid, lba, data, false).unwrap_or_else(|e| panic!("NVMe write ns {nsid} lba {lba}: {e} (connection lost?)"))
    }
    fn read(&mut self, nsid: u32, lba: u64, blocks: u32) -> (Cqe, Vec<u8>) {
        self.io.read(nsid, lba, blocks, BS).unwrap_or_else(|e| panic!("NVMe read ns {nsid} lba {lba}: {e} (connection lost?)"))
    }
    #[track_caller]
    fn round_trip(&mut self, nsid: u32, lba: u64, data: &[u8], what: &str) {
        assert_status(&self.write(nsid, lba, data), Status::SUCCESS, &format!("{what}: write"));
        let (c, back) = self.read(nsid, lba, data.len() as u32 / BS);
        assert_status(&c, Status::SUCCESS, &format!("{what}: read"));
        assert!(back == data, "{what}: read back differs");
    }
}

fn iscsi(s: &Server) -> Session {
    let o = LoginOpts { target: Some(IQN.into()), ..LoginOpts::default() };
    let mut sess = Session::login(s.iscsi_addr, &o).unwrap_or_else(|e| panic!("iSCSI login: {e:?}"));
    sess.clear_unit_attentions(2).unwrap();
    sess
}

fn scsi_write(sess: &mut Session, lun: u64, lba: u64, data: &[u8]) -> ScsiResult {
    sess.scsi_out(lun, &rw16(0x8a, lba, data.len() as u32 / BS), data)
        .unwrap_or_else(|e| panic!("iSCSI WRITE LUN {lun} lba {lba}: {e} (connection lost?)"))
}

fn scsi_read(sess: &mut Session, lun: u64, lba: u64, blocks: u32) -> ScsiResult {
    sess.scsi_in(lun, &rw16(0x88, lba, blocks), blocks * BS).unwrap_or_else(|e| panic!("iSCSI READ LUN {lun} lba {lba}: {e} (connection lost?)"))
}

/// CHECK CONDITION with (sense key, ASC, ASCQ).
#[track_caller]
fn assert_sense(r: &ScsiResult, key: u8, asc: (u8, u8), what: &str) {
    assert_eq!((r.status, r.sense_key(), r.asc()), (2, key, asc), "{what}: sense {:02x?}", r.sense);
}

#[track_caller]
fn scsi_round_trip(sess: &mut Session, lun: u64, lba: u64, data: &[u8], what: &str) {
    let w = scsi_write(sess, lun, lba, data);
    assert_eq!(w.status, 0, "{what}: write: sense {:02x?}", w.sense);
    let r = scsi_read(sess, lun, lba, data.len() as u32 / BS);
    assert_eq!(r.status, 0, "{what}: read: sense {:02x?}", r.sense);
    assert!(r.data == data, "{what}: read back differs");
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u32).wrapping_mul(2654435761).rotate_left(seed as u32) as u8 ^ seed).collect()
}

/// The server is still up and logged no panic.
#[track_caller]
fn assert_server_healthy(s: &mut Server) {
    assert!(s.is_running(), "the server exited:\n{}", s.log_text());
    assert!(!s.log_text().contains("panicked"), "the server panicked:\n{}", s.log_text());
}

// ---- tests ------------------------------------------------------------------

/// A sparse 64 MiB file volume on a 4 MiB tmpfs: writes into holes fill
/// the file system until ENOSPC.
#[test]
fn enospc_on_a_full_file_system() {
    need_root!();
    let fs = Mount::tmpfs("4M");
    let vol = format!("backend = \"file\"\npath = \"{}/thin.img\"\nsize = \"64MiB\"\nio_mode = \"buffered\"", fs.path().display());
    let mut s = start(&vol);
    let mut h = nvme(&s);
    let mut sess = iscsi(&s);

    // blocks written while there is space
    let early = pattern(16 * BS as usize, 1);
    h.round_trip(1, 0, &early, "NVMe before the file system is full");

    // fill it: 256 KiB writes into holes until one is refused (4 MiB of
    // tmpfs is full well before 64 MiB)
    let chunk = pattern(64 * BS as usize, 2);
    let mut lba = 256;
    let full = loop {
        assert!(lba < 16384, "64 MiB written to a 4 MiB tmpfs without ENOSPC");
        let c = h.write(1, lba, &chunk);
        if !status(&c).is_success() {
            break c;
        }
        lba += 64;
    };
    assert_status(&full, Status::CAP_EXCEEDED.dnr(), "NVMe write to a full file system");

    // the same connection still serves: blocks that have space are
    // rewritten and read back, so is the other namespace
    h.round_trip(1, 0, &pattern(16 * BS as usize, 3), "NVMe rewrite of allocated blocks after ENOSPC");
    let (c, back) = h.read(1, 256, 64);
    assert_status(&c, Status::SUCCESS, "NVMe read of the filled range");
    assert!(back == chunk, "the filled range reads back");
    h.round_trip(2, 0, &pattern(64 * BS as usize, 4), "NVMe namespace 2 after ENOSPC on namespace 1");

    // iSCSI: the same full volume
    let r = scsi_write(&mut sess, 0, 12_000, &pattern(64 * BS as usize, 5));
    assert_sense(&r, 7, (0x27, 0x07), "iSCSI write to a full file system: DATA PROTECT, SPACE ALLOCATION FAILED WRITE PROTECT");
    scsi_round_trip(&mut sess, 0, 0, &pattern(16 * BS as usize, 6), "iSCSI rewrite of allocated blocks after ENOSPC");
    scsi_round_trip(&mut sess, 1, 0, &pattern(64 * BS as usize, 7), "iSCSI LUN 1 after ENOSPC on LUN 0");

    // freeing space (deallocate punches holes) makes room again
    let c = h.io.dsm_deallocate(1, &[(256, (lba - 256) as u32)]).expect("DSM");
    assert_status(&c, Status::SUCCESS, "NVMe deallocate of the filled range");
    h.round_trip(1, 12_000, &pattern(64 * BS as usize, 8), "NVMe write into a hole once space is free");
    assert_server_healthy(&mut s);
}

/// A file volume on ext4 whose file system is shut down (every read and
/// write EIO, as when its disk dies); also a block volume (a loop device)
/// whose backing file is on that file system, so the block device's own
/// reads and writes fail with EIO while its size stays: a media error, not
/// a vanished device.
#[test]
fn eio_from_a_failed_file_system_and_block_device() {
    need_root!();
    let images = tempfile::tempdir().unwrap();
    let fs = Mount::ext4(images.path());
    let lo = Loop::new(fs.path().join("block.img"), 8 << 20);
    let vol = format!("backend = \"file\"\npath = \"{}/vol.img\"\nsize = \"16MiB\"\nio_mode = \"buffered\"", fs.path().display());
    let extra = format!(
        "\n[[volume]]\nname = \"blk\"\nbackend = \"block\"\npath = \"{}\"\nblock_size = 4096\n\n[[subsystem]]\nnqn = \"nqn.2026-11.io.pinion:faults-blk\"\nnamespaces = [\"blk\"]\nhosts = [\"*\"]\n",
        lo.dev
    );
    let mut s = Server::start(&(CONFIG.replace("{VOLUME}", &vol) + &extra));
    let mut h = nvme(&s);
    let mut sess = iscsi(&s);
    let data = pattern(32 * BS as usize, 11);
    h.round_trip(1, 0, &data, "NVMe before the fault");
    scsi_round_trip(&mut sess, 0, 64, &data, "iSCSI before the fault");
    let mut b = nvme_of(&s, "nqn.2026-11.io.pinion:faults-blk");
    b.round_trip(1, 0, &data, "NVMe block volume before the fault");

    fs.shut_down();

    let (c, _) = h.read(1, 0, 32);
    assert_status(&c, Status::READ_ERROR, "NVMe read after EIO: Unrecovered Read Error");
    assert_status(&h.write(1, 0, &data), Status::WRITE_FAULT, "NVMe write after EIO: Write Fault");
    assert_status(&h.io.flush(1).expect("flush"), Status::WRITE_FAULT, "NVMe flush after EIO");
    h.round_trip(2, 0, &data, "NVMe namespace 2 after EIO on namespace 1");

    let r = scsi_read(&mut sess, 0, 64, 32);
    assert_sense(&r, 3, (0x11, 0), "iSCSI read after EIO: MEDIUM ERROR, UNRECOVERED READ ERROR");
    let r = scsi_write(&mut sess, 0, 64, &data);
    assert_sense(&r, 3, (0x0c, 0), "iSCSI write after EIO: MEDIUM ERROR, WRITE ERROR");
    scsi_round_trip(&mut sess, 1, 0, &data, "iSCSI LUN 1 after EIO on LUN 0");

    // the block volume: the loop device cannot reach its file
    let (c, _) = b.read(1, 0, 32);
    assert_status(&c, Status::READ_ERROR, "NVMe read of a block device failing with EIO");
    assert_status(&b.write(1, 0, &data), Status::WRITE_FAULT, "NVMe write of a block device failing with EIO");
    h.round_trip(2, 8, &data, "NVMe namespace 2 after EIO on the block volume");
    assert_server_healthy(&mut s);
    drop(s);
}

/// An NVMe controller of another subsystem, namespace 1 only.
fn nvme_of(s: &Server, nqn: &str) -> Nvme {
    let none = Digests { header: false, data: false };
    let mut admin = Queue::connect(s.addr, none).expect("admin TCP connect");
    let c = admin.fabrics_connect(0, 31, 30_000, CNTLID_DYNAMIC, nqn, HOSTNQN, HOSTID, 0).expect("admin Connect");
    assert!(c.status().is_success(), "admin Connect to {nqn}: {:?}", c.status());
    let cntlid = c.result.get() as u16;
    admin.enable_controller().expect("enable controller");
    let mut io = Queue::connect(s.addr, none).expect("I/O TCP connect");
    let c = io.fabrics_connect(1, 31, 0, cntlid, nqn, HOSTNQN, HOSTID, 0).expect("I/O Connect");
    assert!(c.status().is_success(), "I/O Connect to {nqn}: {:?}", c.status());
    io.set_block_size(1, BS);
    Nvme { _admin: admin, io }
}

/// A file volume on ext4 that turns read-only after a file system error
/// (`errors=remount-ro`): writes get EROFS, reads still work.
#[test]
fn erofs_when_the_file_system_turns_read_only() {
    need_root!();
    let images = tempfile::tempdir().unwrap();
    let fs = Mount::ext4(images.path());
    let vol = format!("backend = \"file\"\npath = \"{}/vol.img\"\nsize = \"16MiB\"\nio_mode = \"buffered\"", fs.path().display());
    let mut s = start(&vol);
    let mut h = nvme(&s);
    let mut sess = iscsi(&s);
    let data = pattern(32 * BS as usize, 21);
    h.round_trip(1, 0, &data, "NVMe before the error");
    scsi_round_trip(&mut sess, 0, 64, &data, "iSCSI before the error");

    fs.trigger_error();

    let other = pattern(32 * BS as usize, 22);
    assert_status(&h.write(1, 0, &other), Status::NS_WRITE_PROTECTED.dnr(), "NVMe write after EROFS");
    let (c, back) = h.read(1, 0, 32);
    assert_status(&c, Status::SUCCESS, "NVMe read after EROFS");
    assert!(back == data, "NVMe read after EROFS: the data written before");
    h.round_trip(2, 0, &other, "NVMe namespace 2 after EROFS on namespace 1");

    let r = scsi_write(&mut sess, 0, 64, &other);
    assert_sense(&r, 7, (0x27, 0), "iSCSI write after EROFS: DATA PROTECT, WRITE PROTECTED");
    let r = scsi_read(&mut sess, 0, 64, 32);
    assert_eq!(r.status, 0, "iSCSI read after EROFS: sense {:02x?}", r.sense);
    assert!(r.data == data, "iSCSI read after EROFS: the data written before");
    scsi_round_trip(&mut sess, 1, 0, &other, "iSCSI LUN 1 after EROFS on LUN 0");
    assert_server_healthy(&mut s);
}

/// A block volume whose device vanishes: its capacity drops to 0 under the
/// open fds, as for a removed disk. Reads must not come back as zeroes.
#[test]
fn vanished_block_device() {
    need_root!();
    let dir = tempfile::tempdir().unwrap();
    for io_mode in ["direct", "buffered"] {
        let lo = Loop::new(dir.path().join(format!("{io_mode}.img")), 16 << 20);
        let vol = format!("backend = \"block\"\npath = \"{}\"\nio_mode = \"{io_mode}\"", lo.dev);
        let mut s = start(&vol);
        let mut h = nvme(&s);
        let mut sess = iscsi(&s);
        let data = pattern(32 * BS as usize, 31);
        h.round_trip(1, 0, &data, &format!("NVMe before the device vanished ({io_mode})"));
        scsi_round_trip(&mut sess, 0, 64, &data, &format!("iSCSI before the device vanished ({io_mode})"));

        lo.vanish();

        let what = |w: &str| format!("{w} after the device vanished ({io_mode})");
        let (c, _) = h.read(1, 0, 32);
        assert_status(&c, Status::NS_NOT_READY.dnr(), &what("NVMe read"));
        assert_status(&h.write(1, 0, &data), Status::NS_NOT_READY.dnr(), &what("NVMe write"));
        h.round_trip(2, 0, &data, &what("NVMe namespace 2"));

        let r = scsi_read(&mut sess, 0, 64, 32);
        assert_sense(&r, 2, (0x08, 0), &what("iSCSI read: NOT READY, LOGICAL UNIT COMMUNICATION FAILURE"));
        let r = scsi_write(&mut sess, 0, 64, &data);
        assert_sense(&r, 2, (0x08, 0), &what("iSCSI write"));
        scsi_round_trip(&mut sess, 1, 0, &data, &what("iSCSI LUN 1"));
        assert_server_healthy(&mut s);
        drop(s);
    }
}
