use super::*;
use std::ffi::OsString;
use std::net::SocketAddr;

const EXAMPLE: &str = include_str!("../../deploy/examples/pinion.toml");
const RAM_AND_NULL: &str = include_str!("../../deploy/examples/ram-and-null.toml");

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// The error text for a config that must be rejected.
fn err(toml: &str) -> String {
    match Config::from_toml_str(toml) {
        Ok(c) => panic!("accepted:\n{toml}\n=> {c:#?}"),
        Err(e) => e.to_string(),
    }
}

fn assert_err(toml: &str, needles: &[&str]) {
    let e = err(toml);
    for n in needles {
        assert!(
            e.contains(n),
            "expected {n:?} in error:\n{e}\n--- for config:\n{toml}"
        );
    }
}

/// A RAM volume and a subsystem using it, so a case only has to add the part under test.
const BASE: &str = r#"
[[volume]]
name = "v0"
backend = "ram"
size = "1MiB"

[[subsystem]]
nqn = "nqn.2026-11.io.pinion:a"
namespaces = ["v0"]
"#;

fn with_base(extra: &str) -> String {
    format!("{BASE}\n{extra}")
}

fn env(pairs: &[(&str, &str)]) -> Option<Vec<(String, OsString)>> {
    Some(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect(),
    )
}

// ---------------------------------------------------------------- examples and defaults

#[test]
fn example_file_parses_to_expected_values() {
    let c = Config::from_toml_str(EXAMPLE).unwrap();
    let expected = Config {
        nvme_tcp: NvmeTcpConfig {
            listen: vec![addr("127.0.0.1:4420")],
            ..Default::default()
        },
        iscsi: IscsiConfig {
            listen: vec![addr("127.0.0.1:3260")],
            ..Default::default()
        },
        volume: vec![VolumeConfig {
            name: "vol1".into(),
            backend: BackendKind::File,
            path: Some("/dev/shm/pinion-vol1.img".into()),
            size: Some(256 << 20),
            io_mode: IoMode::Auto,
            block_size: 4096,
            read_only: false,
            ..VolumeConfig::none()
        }],
        subsystem: vec![SubsystemConfig {
            nqn: "nqn.2026-11.io.pinion:vol1".into(),
            namespaces: vec!["vol1".into()],
            hosts: Some(vec!["*".into()]),
            host: vec![],
            serial: None,
            model: None,
        }],
        iscsi_target: vec![IscsiTargetConfig {
            iqn: "iqn.2026-11.io.pinion:vol1".into(),
            luns: vec!["vol1".into()],
            initiators: vec!["*".into()],
            alias: None,
            chap: None,
            mutual_chap: None,
            initiator_chap: vec![],
        }],
        memory: MemoryConfig { pool: 256 << 20, splice_min: 32 << 10, zerocopy_min: 32 << 10 },
        limits: LimitsConfig { max_connections: 1024, max_connections_per_host: 256, max_write_data_in_flight: 8 << 20, handshake_timeout: 15 },
        metrics: MetricsConfig { listen: None },
        runtime: RuntimeConfig { cores: None, io_engine: Default::default(), busy_poll_us: 0 },
        log: LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        },
        debug: DebugConfig {
            poison_released_pages: false,
            early_release: false,
            keep_zerocopy_when_copied: false,
        },
        management: ManagementConfig { socket: None },
        ana_group: vec![],
        state: StateConfig { dir: None },
    };
    assert_eq!(c, expected);
    assert_eq!(c.nvme_tcp.inline_data_size, 16384);
    assert_eq!(c.nvme_tcp.max_queue_size, 128);
    assert_eq!(c.nvme_tcp.max_io_queues, 8);
    assert_eq!(c.nvme_tcp.max_h2c_data, 131072);
    assert!(c.warnings().is_empty(), "{:?}", c.warnings());
}

#[test]
fn ram_and_null_example_parses() {
    let c = Config::from_toml_str(RAM_AND_NULL).unwrap();
    assert_eq!(c.volume.len(), 2);
    let ram = c.volume("ram0").unwrap();
    assert_eq!(
        (ram.backend, ram.size, ram.block_size),
        (BackendKind::Ram, Some(1 << 30), 4096)
    );
    let null = c.volume("null0").unwrap();
    assert_eq!(
        (null.backend, null.size, null.block_size),
        (BackendKind::Null, Some(16 << 30), 512)
    );
    assert_eq!(c.subsystem.len(), 2);
    assert_eq!(c.subsystem[0].serial.as_deref(), Some("PINION-RAM0"));
    assert_eq!(c.subsystem[1].namespaces, ["null0"]);
    assert!(c.iscsi.listen.is_empty());
    assert_eq!(c.nvme_tcp.inline_data_size, 16384);
    assert_eq!(c.nvme_tcp.max_h2c_data, 131072);
    assert!(c.warnings().is_empty(), "{:?}", c.warnings());
}

#[test]
fn default_ram_validates() {
    let c = Config::default_ram();
    c.validate().unwrap();
    assert!(c.warnings().is_empty());
    let v = c.volume("ram0").unwrap();
    assert_eq!(
        (v.backend, v.size, v.block_size, v.path.as_ref()),
        (BackendKind::Ram, Some(1 << 30), 4096, None)
    );
    assert_eq!(c.subsystem[0].nqn, "nqn.2026-11.io.pinion:default");
    assert_eq!(c.subsystem[0].namespaces, ["ram0"]);
    assert_eq!(c.subsystem[0].allowed_hosts(), ["*"]);
    assert_eq!(c.iscsi_target[0].iqn, "iqn.2026-11.io.pinion:default");
    assert_eq!(c.iscsi_target[0].luns, ["ram0"]);
    assert_eq!(c.nvme_tcp.listen, [addr("127.0.0.1:4420")]);
    assert_eq!(c.iscsi.listen, [addr("127.0.0.1:3260")]);
    assert!(c.volume("nope").is_none());
}

#[test]
fn empty_config_is_valid_with_defaults() {
    let c = Config::from_toml_str("").unwrap();
    assert_eq!(c, Config::default());
    assert_eq!(c.nvme_tcp.listen, [addr("127.0.0.1:4420")]);
    assert_eq!(c.iscsi.listen, [addr("127.0.0.1:3260")]);
    assert_eq!(c.memory.pool, 256 << 20);
    assert_eq!(c.log.level, "info");
}

#[test]
fn partial_sections_keep_other_defaults() {
    let c = Config::from_toml_str(
        "[nvme_tcp]\nmax_io_queues = 4\ninline_data_size = \"8KiB\"\n[log]\nformat = \"json\"\n[memory]\npool = 8388608\n",
    )
    .unwrap();
    assert_eq!(c.nvme_tcp.listen, [addr("127.0.0.1:4420")]);
    assert_eq!(c.nvme_tcp.max_io_queues, 4);
    assert_eq!(c.nvme_tcp.inline_data_size, 8192);
    assert_eq!(c.nvme_tcp.max_queue_size, 128);
    assert_eq!(
        c.log,
        LogConfig {
            level: "info".into(),
            format: LogFormat::Json
        }
    );
    assert_eq!(c.memory.pool, 8 << 20);
}

#[test]
fn volume_defaults_and_options() {
    let c = Config::from_toml_str(&with_base(
        "[[volume]]\nname = \"n.1_x-y\"\nbackend = \"null\"\nsize = 4096\nio_mode = \"direct\"\nblock_size = \"512\"\nread_only = true\n",
    ))
    .unwrap();
    let v0 = &c.volume[0];
    assert_eq!(
        (v0.io_mode, v0.block_size, v0.read_only),
        (IoMode::Auto, 4096, false)
    );
    let v1 = c.volume("n.1_x-y").unwrap();
    assert_eq!(
        (v1.io_mode, v1.block_size, v1.read_only, v1.size),
        (IoMode::Direct, 512, true, Some(4096))
    );
    assert_eq!(
        c.warnings(),
        [r#"volume[1] "n.1_x-y" is not used by any [[subsystem]] or [[iscsi_target]]"#]
    );
}

// ---------------------------------------------------------------- schema pre-pass

#[test]
fn unknown_top_level_key_is_named() {
    assert_err("colour = 1\n", &[r#"unknown key "colour" at top level"#]);
    assert_err(
        "[volumes]\nx = 1\n",
        &[r#"unknown key "volumes" at top level (did you mean "volume"?)"#],
    );
}

#[test]
fn unknown_key_in_volume_is_named_with_index() {
    let toml = with_base("[[volume]]\nname = \"v1\"\nbackend = \"ram\"\nsise = \"1MiB\"\n");
    assert_err(
        &toml,
        &[
            r#"unknown key "sise" in volume[1]"#,
            r#"did you mean "size"?"#,
        ],
    );
}

#[test]
fn unknown_keys_in_sections_are_named() {
    assert_err(
        "[log]\nlevel = \"info\"\nformt = \"json\"\n",
        &[r#"unknown key "formt" in log"#],
    );
    assert_err(
        "[nvme_tcp]\nport = 4420\n",
        &[r#"unknown key "port" in nvme_tcp"#, "known keys: listen"],
    );
    assert_err(
        &with_base("[[subsystem]]\nnqn = \"nqn.x\"\nnamespaces = [\"v0\"]\nhots = [\"*\"]\n"),
        &[r#"unknown key "hots" in subsystem[1]"#],
    );
    assert_err(
        "[[iscsi_target]]\niqn = \"iqn.x\"\nluns = []\nlun = 1\n",
        &[r#"unknown key "lun" in iscsi_target[0]"#],
    );
    assert_err(
        "[debug]\npoison = true\n",
        &[r#"unknown key "poison" in debug"#],
    );
}

#[test]
fn missing_required_keys_are_named() {
    assert_err(
        "[[volume]]\nname = \"v\"\n",
        &[r#"missing required key "backend" in volume[0]"#],
    );
    assert_err(
        "[[subsystem]]\nnqn = \"nqn.x\"\n",
        &[r#"missing required key "namespaces" in subsystem[0]"#],
    );
    assert_err(
        "[[iscsi_target]]\nluns = []\n",
        &[r#"missing required key "iqn" in iscsi_target[0]"#],
    );
}

#[test]
fn bad_size_string_names_key_and_value() {
    let toml = with_base("[[volume]]\nname = \"v1\"\nbackend = \"ram\"\nsize = \"12XB\"\n");
    assert_eq!(
        err(&toml),
        r#"volume[1].size: "12XB" is not a size (use e.g. 512MiB, 1GiB, 4096)"#
    );
    assert_err("[memory]\npool = -5\n", &["memory.pool:", "is not a size"]);
    assert_err("[memory]\npool = 1.5\n", &["memory.pool: expected a size"]);
    assert_err(
        "[nvme_tcp]\nmax_h2c_data = \"8GiB\"\n",
        &["nvme_tcp.max_h2c_data: 8 GiB is too large"],
    );
}

#[test]
fn wrong_types_name_the_key() {
    assert_err(
        "[nvme_tcp]\nmax_queue_size = \"64\"\n",
        &[r#"nvme_tcp.max_queue_size: expected an integer, found string "64""#],
    );
    assert_err(
        "[nvme_tcp]\nmax_io_queues = 70000\n",
        &["nvme_tcp.max_io_queues: 70000 is out of range"],
    );
    assert_err(
        "[nvme_tcp]\nlisten = \"127.0.0.1:4420\"\n",
        &["nvme_tcp.listen: expected an array"],
    );
    assert_err(
        "[nvme_tcp]\nlisten = [\"localhost:4420\"]\n",
        &[r#"nvme_tcp.listen[0]: "localhost:4420" is not an address:port"#],
    );
    assert_err(
        "[iscsi]\nlisten = [3260]\n",
        &["iscsi.listen[0]: expected a string"],
    );
    assert_err(
        &with_base("[[volume]]\nname = \"v1\"\nbackend = \"disk\"\n"),
        &[r#"volume[1].backend: "disk" is not one of "ram", "null", "file", "block", "rbd""#],
    );
    assert_err(
        &with_base("[[volume]]\nname = 7\nbackend = \"ram\"\n"),
        &["volume[1].name: expected a string, found integer 7"],
    );
    assert_err(
        &with_base("[[volume]]\nname = \"v1\"\nbackend = \"ram\"\nread_only = \"yes\"\n"),
        &["volume[1].read_only: expected true or false"],
    );
    assert_err(
        "[[subsystem]]\nnqn = \"nqn.x\"\nnamespaces = [\"a\", 2]\n",
        &["subsystem[0].namespaces[1]: expected a string"],
    );
    assert_err(
        "[log]\nformat = \"xml\"\n",
        &[r#"log.format: "xml" is not one of "text", "json""#],
    );
    assert_err(
        "[volume]\nname = \"v\"\nbackend = \"ram\"\n",
        &["volume: write [[volume]] (an array of tables), not [volume]"],
    );
    assert_err("log = \"debug\"\n", &["log: expected a table [log]"]);
}

#[test]
fn syntax_errors_say_so() {
    let e = Config::from_toml_str("[log\nlevel = 1").unwrap_err();
    assert!(matches!(e, ConfError::Syntax { .. }), "{e:?}");
    assert!(e.to_string().starts_with("<string>: invalid TOML"), "{e}");
}

#[test]
fn all_problems_are_reported_together() {
    let e = Config::from_toml_str("foo = 1\n[log]\nbar = 2\n[nvme_tcp]\nmax_io_queues = \"x\"\n")
        .unwrap_err();
    let keys: Vec<&str> = e.problems().iter().map(|p| p.key.as_str()).collect();
    assert_eq!(keys, ["foo", "nvme_tcp.max_io_queues", "log.bar"]);
    assert_eq!(e.to_string().lines().count(), 3);
}

/// The pre-pass schema must describe exactly what serde accepts, or it would reject valid files
/// (or wave through keys that serde then rejects with a pathless message).
#[test]
fn schema_matches_serde_structs() {
    let mut full = Config::default_ram();
    full.volume[0].path = Some("/x".into());
    let v = &mut full.volume[0];
    (v.pool, v.image, v.namespace, v.client) = (Some("p".into()), Some("i".into()), Some("n".into()), Some("c".into()));
    (v.ceph_conf, v.keyring, v.rbd_timeout) = (Some("/c".into()), Some("/k".into()), Some(1));
    full.subsystem[0].serial = Some("s".into());
    full.subsystem[0].model = Some("m".into());
    full.metrics.listen = Some(addr("127.0.0.1:9464"));
    full.management.socket = Some("/run/pinion/ctl.sock".into());
    full.state.dir = Some("/var/lib/pinion".into());
    full.runtime.cores = Some(2);
    full.runtime.busy_poll_us = 50;
    let creds = |u: &str| ChapConfig { user: u.into(), secret: Secret(format!("{u}-secret-long")) };
    full.subsystem[0].host = vec![SubsystemHostConfig {
        nqn: "nqn.h".into(),
        dhchap_key: Some(Secret("k".into())),
        dhchap_ctrl_key: Some(Secret("c".into())),
        dhchap_hash: Some("sha384".into()),
        dhchap_dhgroup: Some("ffdhe3072".into()),
        tls_key: Some(Secret("t".into())),
        tls_key_compat: true,
    }];
    full.nvme_tcp.tls = TlsMode::Optional;
    full.nvme_tcp.listener_tls = vec![ListenerTls { addr: full.nvme_tcp.listen[0], tls: TlsMode::Required }];
    full.iscsi.discovery_chap = Some(creds("four"));
    full.iscsi.discovery_mutual_chap = Some(creds("five"));
    let t = &mut full.iscsi_target[0];
    t.alias = Some("a".into());
    t.chap = Some(creds("one"));
    t.mutual_chap = Some(creds("two"));
    t.initiator_chap = vec![InitiatorChapConfig { initiator: "iqn.x".into(), user: "three".into(), secret: Secret("three-secret-long".into()) }];
    let l = full.nvme_tcp.listen[0];
    full.ana_group = vec![ana::AnaGroupConfig {
        id: 2,
        volumes: vec![full.volume[0].name.clone()],
        // every list non-empty, so each key is serialised (not a valid config)
        optimized: vec![l],
        non_optimized: vec![l],
        inaccessible: vec![l],
        persistent_loss: vec![l],
        change: vec![l],
    }];
    let tree = config::Config::try_from(&full).unwrap();
    assert_eq!(schema::check(&tree.cache), []);

    // Every schema key appears in the serialised form, so the schema has no stale keys.
    fn walk(v: &config::Value, fields: &[schema::Field], at: &str) {
        let config::ValueKind::Table(t) = &v.kind else {
            panic!("{at}: not a table")
        };
        for f in fields {
            let child = t
                .get(f.key)
                .unwrap_or_else(|| panic!("{at}.{}: in schema, not serialised", f.key));
            match f.kind {
                schema::Kind::Section(sub) => walk(child, sub, f.key),
                schema::Kind::Tables(sub) => match &child.kind {
                    config::ValueKind::Array(items) => walk(&items[0], sub, f.key),
                    _ => panic!("{}: not an array", f.key),
                },
                _ => {}
            }
        }
    }
    walk(&tree.cache, schema::ROOT, "");

    // And the serialised form deserialises back to the same value.
    let back: Config = tree.try_deserialize().unwrap();
    assert_eq!(back, full);
}

// ---------------------------------------------------------------- validation rules

#[test]
fn volume_name_rules() {
    assert_err(
        &with_base("[[volume]]\nname = \"\"\nbackend = \"ram\"\nsize = 4096\n"),
        &["volume[1].name: must not be empty"],
    );
    assert_err(
        &with_base("[[volume]]\nname = \"a b\"\nbackend = \"ram\"\nsize = 4096\n"),
        &[r#"volume[1].name: "a b" may only contain"#],
    );
    assert_err(
        &with_base("[[volume]]\nname = \"v0\"\nbackend = \"null\"\nsize = 4096\n"),
        &[r#"volume[1].name: "v0" is already used by volume[0]"#],
    );
}

#[test]
fn ram_and_null_rules() {
    assert_err(
        "[[volume]]\nname = \"r\"\nbackend = \"ram\"\n",
        &[r#"volume[0].size: required for backend "ram""#],
    );
    assert_err(
        "[[volume]]\nname = \"n\"\nbackend = \"null\"\n",
        &[r#"volume[0].size: required for backend "null""#],
    );
    assert_err(
        "[[volume]]\nname = \"r\"\nbackend = \"ram\"\nsize = 4096\npath = \"/tmp/x\"\n",
        &[r#"volume[0].path: not allowed for backend "ram""#],
    );
}

#[test]
fn size_and_block_size_rules() {
    assert_err(
        "[[volume]]\nname = \"r\"\nbackend = \"ram\"\nsize = 0\n",
        &["volume[0].size: must be greater than 0"],
    );
    assert_err(
        "[[volume]]\nname = \"r\"\nbackend = \"ram\"\nsize = \"1MB\"\n",
        &["volume[0].size: 1000000 bytes is not a multiple of block_size 4096"],
    );
    assert_err(
        "[[volume]]\nname = \"r\"\nbackend = \"ram\"\nsize = 4096\nblock_size = 1024\n",
        &["volume[0].block_size: 1024 is not supported (use 512 or 4096)"],
    );
    // 512-byte blocks allow sizes that 4096 would not.
    Config::from_toml_str(
        "[[volume]]\nname = \"r\"\nbackend = \"ram\"\nsize = 1536\nblock_size = 512\n",
    )
    .unwrap();
}

#[test]
fn file_backend_rules() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    assert_err(
        "[[volume]]\nname = \"f\"\nbackend = \"file\"\nsize = 4096\n",
        &[r#"volume[0].path: required for backend "file""#],
    );
    // Missing file: size required, then the server creates it.
    assert_err(
        &format!("[[volume]]\nname = \"f\"\nbackend = \"file\"\npath = \"{d}/new.img\"\n"),
        &["volume[0].size: required because", "new.img does not exist"],
    );
    Config::from_toml_str(&format!(
        "[[volume]]\nname = \"f\"\nbackend = \"file\"\npath = \"{d}/new.img\"\nsize = \"1MiB\"\n"
    ))
    .unwrap();
    // Missing directory.
    assert_err(&format!("[[volume]]\nname = \"f\"\nbackend = \"file\"\npath = \"{d}/no/such.img\"\nsize = 4096\n"), &[
        "volume[0].path: directory",
        "does not exist",
    ]);
    // Existing file: size optional.
    let img = dir.path().join("old.img");
    std::fs::write(&img, vec![0u8; 8192]).unwrap();
    let c = Config::from_toml_str(&format!(
        "[[volume]]\nname = \"f\"\nbackend = \"file\"\npath = \"{}\"\n",
        img.display()
    ))
    .unwrap();
    assert_eq!(c.volume[0].path.as_deref(), Some(img.as_path()));
    assert_eq!(c.volume[0].size, None);
    // A directory is not a file.
    assert_err(
        &format!("[[volume]]\nname = \"f\"\nbackend = \"file\"\npath = \"{d}\"\n"),
        &["volume[0].path:", "is a directory"],
    );
}

#[test]
fn block_backend_rules() {
    assert_err(
        "[[volume]]\nname = \"b\"\nbackend = \"block\"\n",
        &[r#"volume[0].path: required for backend "block""#],
    );
    assert_err(
        "[[volume]]\nname = \"b\"\nbackend = \"block\"\npath = \"/dev/x\"\n",
        &["volume[0].path: /dev/x does not exist"],
    );
    let file = tempfile::NamedTempFile::new().unwrap();
    assert_err(
        &format!(
            "[[volume]]\nname = \"b\"\nbackend = \"block\"\npath = \"{}\"\n",
            file.path().display()
        ),
        &["volume[0].path:", "is not a block device"],
    );
    assert_err(
        "[[volume]]\nname = \"b\"\nbackend = \"block\"\npath = \"/dev/x\"\nsize = \"1GiB\"\n",
        &["volume[0].size: not allowed for backend \"block\" (the size is taken from the device)"],
    );
    // A real block device passes, where the machine has one visible.
    let dev = std::fs::read_dir("/dev")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            std::fs::metadata(p)
                .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type()))
        });
    if let Some(dev) = dev {
        Config::from_toml_str(&format!(
            "[[volume]]\nname = \"b\"\nbackend = \"block\"\npath = \"{}\"\n",
            dev.display()
        ))
        .unwrap();
    }
}

#[test]
fn subsystem_nqn_rules() {
    let sub = |nqn: &str| {
        with_base(&format!(
            "[[subsystem]]\nnqn = \"{nqn}\"\nnamespaces = [\"v0\"]\n"
        ))
    };
    assert_err(
        &sub("nvme.x"),
        &[r#"subsystem[1].nqn: "nvme.x" must start with "nqn.""#],
    );
    assert_err(
        &sub(&format!("nqn.{}", "a".repeat(220))),
        &["subsystem[1].nqn: is 224 bytes (at most 223)"],
    );
    assert_err(
        &sub(DISCOVERY_NQN),
        &["subsystem[1].nqn: is the discovery subsystem NQN"],
    );
    assert_err(
        &sub("nqn.2026-11.io.pinion:a"),
        &[r#"subsystem[1].nqn: "nqn.2026-11.io.pinion:a" is already used by subsystem[0]"#],
    );
    Config::from_toml_str(&sub(&format!("nqn.{}", "a".repeat(219)))).unwrap();
}

#[test]
fn subsystem_namespace_rules() {
    assert_err(
        "[[subsystem]]\nnqn = \"nqn.x\"\nnamespaces = []\n",
        &["subsystem[0].namespaces: must list at least one volume"],
    );
    assert_err(
        &with_base("[[subsystem]]\nnqn = \"nqn.b\"\nnamespaces = [\"v0\", \"v9\"]\n"),
        &[r#"subsystem[1].namespaces[1]: no volume named "v9" (volumes: v0)"#],
    );
    assert_err(
        &with_base("[[subsystem]]\nnqn = \"nqn.b\"\nnamespaces = [\"v0\", \"v0\"]\n"),
        &[r#"subsystem[1].namespaces[1]: "v0" is already listed as subsystem[1].namespaces[0]"#],
    );
    // The same volume in two subsystems is fine.
    Config::from_toml_str(&with_base(
        "[[subsystem]]\nnqn = \"nqn.b\"\nnamespaces = [\"v0\"]\n",
    ))
    .unwrap();
}

#[test]
fn subsystem_host_serial_model_rules() {
    let sub = |extra: &str| {
        with_base(&format!(
            "[[subsystem]]\nnqn = \"nqn.b\"\nnamespaces = [\"v0\"]\n{extra}\n"
        ))
    };
    assert_err(
        &sub("hosts = []"),
        &["subsystem[1].hosts: must not be empty"],
    );
    assert_err(
        &sub("hosts = [\"*\", \"\"]"),
        &[r#"subsystem[1].hosts[1]: "" is neither "*" nor a host NQN"#],
    );
    assert_err(
        &sub("hosts = [\"host1\"]"),
        &[r#"subsystem[1].hosts[0]: "host1" is neither"#],
    );
    assert_err(
        &sub(&format!("serial = \"{}\"", "1".repeat(21))),
        &["subsystem[1].serial:", "is 21 bytes (at most 20)"],
    );
    assert_err(
        &sub("serial = \"tab\\there\""),
        &["subsystem[1].serial:", "printable ASCII"],
    );
    assert_err(
        &sub("serial = \"café\""),
        &["subsystem[1].serial:", "printable ASCII"],
    );
    assert_err(
        &sub(&format!("model = \"{}\"", "m".repeat(41))),
        &["subsystem[1].model:", "is 41 bytes (at most 40)"],
    );
    let ok = Config::from_toml_str(&sub(&format!(
        "hosts = [\"nqn.2014-08.org.nvmexpress:uuid:1\"]\nserial = \"{}\"\nmodel = \"{}\"",
        "1".repeat(20),
        "m".repeat(40)
    )))
    .unwrap();
    assert_eq!(ok.subsystem[1].allowed_hosts(), ["nqn.2014-08.org.nvmexpress:uuid:1"]);
}

#[test]
fn iscsi_target_rules() {
    let tgt = |iqn: &str, luns: &str| {
        with_base(&format!(
            "[[iscsi_target]]\niqn = \"{iqn}\"\nluns = {luns}\n"
        ))
    };
    Config::from_toml_str(&tgt("iqn.2026-11.io.pinion:t", "[\"v0\"]")).unwrap();
    Config::from_toml_str(&tgt("eui.0123456789abcdef", "[\"v0\"]")).unwrap();
    Config::from_toml_str(&tgt("naa.0123456789abcdef", "[\"v0\"]")).unwrap();
    assert_err(
        &tgt("target1", "[\"v0\"]"),
        &[r#"iscsi_target[0].iqn: "target1" must start with "iqn.""#],
    );
    assert_err(
        &tgt("iqn.x", "[\"v0\", \"nope\"]"),
        &[r#"iscsi_target[0].luns[1]: no volume named "nope""#],
    );
    assert_err(
        &tgt("iqn.x", "[\"v0\", \"v0\"]"),
        &[r#"iscsi_target[0].luns[1]: "v0" is already listed as iscsi_target[0].luns[0]"#],
    );
    assert_err(
        &tgt("iqn.x", "[]"),
        &["iscsi_target[0].luns: must list at least one volume"],
    );
    let two = with_base("[[iscsi_target]]\niqn = \"iqn.x\"\nluns = [\"v0\"]\n[[iscsi_target]]\niqn = \"IQN.X\"\nluns = [\"v0\"]\n");
    assert_err(
        &two,
        &[r#"iscsi_target[1].iqn: "IQN.X" is already used by iscsi_target[0]"#],
    );
    let bad_init =
        with_base("[[iscsi_target]]\niqn = \"iqn.x\"\nluns = [\"v0\"]\ninitiators = [\"bob\"]\n");
    assert_err(
        &bad_init,
        &[r#"iscsi_target[0].initiators[0]: "bob" is neither"#],
    );
}

#[test]
fn listen_rules() {
    assert_err(
        "[nvme_tcp]\nlisten = [\"127.0.0.1:4420\", \"127.0.0.1:4420\"]\n",
        &["nvme_tcp.listen[1]: 127.0.0.1:4420 is also listed as nvme_tcp.listen[0]"],
    );
    assert_err(
        "[nvme_tcp]\nlisten = [\"0.0.0.0:4420\", \"10.0.0.1:4420\"]\n",
        &["nvme_tcp.listen[1]: 10.0.0.1:4420 overlaps nvme_tcp.listen[0]"],
    );
    assert_err(
        "[iscsi]\nlisten = [\"127.0.0.1:4420\"]\n",
        &["iscsi.listen[0]: 127.0.0.1:4420 is also listed as nvme_tcp.listen[0]"],
    );
    // Different families, different ports, and ephemeral ports don't collide.
    Config::from_toml_str(
        "[nvme_tcp]\nlisten = [\"0.0.0.0:4420\", \"[::]:4420\", \"127.0.0.1:4421\"]\n",
    )
    .unwrap();
    Config::from_toml_str(
        "[nvme_tcp]\nlisten = [\"127.0.0.1:0\"]\n[iscsi]\nlisten = [\"127.0.0.1:0\"]\n",
    )
    .unwrap();
    let c = Config::from_toml_str("[nvme_tcp]\nlisten = []\n[iscsi]\nlisten = []\n").unwrap();
    assert!(c.nvme_tcp.listen.is_empty() && c.iscsi.listen.is_empty());
}

#[test]
fn nvme_tcp_limit_rules() {
    for (toml, needle) in [
        (
            "inline_data_size = 4096",
            "nvme_tcp.inline_data_size: 4096 is out of range (8192..=131072)",
        ),
        (
            "inline_data_size = \"256KiB\"",
            "nvme_tcp.inline_data_size: 262144 is out of range",
        ),
        (
            "max_queue_size = 8",
            "nvme_tcp.max_queue_size: 8 is out of range (16..=128)",
        ),
        (
            "max_queue_size = 256",
            "nvme_tcp.max_queue_size: 256 is out of range",
        ),
        (
            "max_io_queues = 0",
            "nvme_tcp.max_io_queues: 0 is out of range (1..=64)",
        ),
        (
            "max_io_queues = 65",
            "nvme_tcp.max_io_queues: 65 is out of range",
        ),
        (
            "max_h2c_data = 1024",
            "nvme_tcp.max_h2c_data: 1024 is out of range (at least 4096)",
        ),
    ] {
        assert_err(&format!("[nvme_tcp]\n{toml}\n"), &[needle]);
    }
    let c = Config::from_toml_str(
        "[nvme_tcp]\ninline_data_size = \"128KiB\"\nmax_queue_size = 16\nmax_io_queues = 64\nmax_h2c_data = \"1MiB\"\n",
    )
    .unwrap();
    assert_eq!(c.nvme_tcp.max_h2c_data, 1 << 20);
}

#[test]
fn limits_rules() {
    for (toml, needle) in [
        ("max_connections = 0", "limits.max_connections: 0 is out of range (1..=1048576)"),
        ("max_connections_per_host = 0", "limits.max_connections_per_host: 0 is out of range"),
        ("max_connections = 10\nmax_connections_per_host = 11", "limits.max_connections_per_host: 11 is larger than limits.max_connections (10)"),
        ("max_connections = 2000000", "limits.max_connections: 2000000 is out of range (0..=1048576)"),
        ("max_write_data_in_flight = \"4KiB\"", "limits.max_write_data_in_flight: 4 KiB is too small (at least 64 KiB)"),
        ("max_write_data_in_flight = \"lots\"", "limits.max_write_data_in_flight:"),
        ("handshake_timeout = 0", "limits.handshake_timeout: 0 is out of range (1..=300)"),
        ("max_conections = 5", "unknown key \"max_conections\" in limits (did you mean \"max_connections\"?)"),
    ] {
        assert_err(&format!("[limits]\n{toml}\n"), &[needle]);
    }
    let c = Config::from_toml_str(
        "[limits]\nmax_connections = 10\nmax_connections_per_host = 3\nmax_write_data_in_flight = \"1MiB\"\nhandshake_timeout = 2\n",
    )
    .unwrap();
    assert_eq!(c.limits, LimitsConfig { max_connections: 10, max_connections_per_host: 3, max_write_data_in_flight: 1 << 20, handshake_timeout: 2 });
    let c = load::load_str("", "env", env(&[("PINION_LIMITS__MAX_CONNECTIONS_PER_HOST", "7")])).unwrap();
    assert_eq!(c.limits.max_connections_per_host, 7);
}

#[test]
fn memory_and_log_rules() {
    assert_err(
        "[memory]\npool = \"1MiB\"\n",
        &["memory.pool: 1 MiB is too small (at least 4 MiB)"],
    );
    assert_err(
        "[memory]\npool = 4194305\n",
        &["memory.pool: 4194305 bytes is not a multiple of 4096"],
    );
    assert_err("[log]\nlevel = \" \"\n", &["log.level: must not be empty"]);
    assert_eq!(
        Config::from_toml_str("[memory]\npool = \"4MiB\"\n")
            .unwrap()
            .memory
            .pool,
        4 << 20
    );
}

#[test]
fn validate_reports_every_problem() {
    let mut c = Config::default_ram();
    c.memory.pool = 0;
    c.volume[0].block_size = 1000;
    c.subsystem[0].namespaces.push("missing".into());
    let e = c.validate().unwrap_err();
    let keys: Vec<&str> = e.problems().iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "volume[0].block_size",
            "subsystem[0].namespaces[1]",
            "memory.pool"
        ]
    );
    for p in e.problems() {
        assert!(p.message.starts_with(&p.key), "{p}");
    }
}

#[test]
fn warnings_for_unused_volumes_and_unreachable_services() {
    let c = Config::from_toml_str(
        "[nvme_tcp]\nlisten = []\n[[volume]]\nname = \"a\"\nbackend = \"ram\"\nsize = 4096\n[[volume]]\nname = \"b\"\nbackend = \"ram\"\nsize = 4096\n\
         [[subsystem]]\nnqn = \"nqn.x\"\nnamespaces = [\"a\"]\n",
    )
    .unwrap();
    let w = c.warnings();
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(w[0].contains(r#"volume[1] "b" is not used"#), "{w:?}");
    assert!(w[1].contains("nvme_tcp.listen is empty"), "{w:?}");
}

// ---------------------------------------------------------------- loading and environment

#[test]
fn env_overrides_apply() {
    let c = load::load_str(
        EXAMPLE,
        "example",
        env(&[
            ("HOME", "/root"),
            ("PINION_LOG__LEVEL", "debug"),
            ("PINION_LOG__FORMAT", "json"),
            ("PINION_MEMORY__POOL", "512MiB"),
            ("PINION_NVME_TCP__MAX_IO_QUEUES", "4"),
            ("PINION_NVME_TCP__LISTEN", "0.0.0.0:4420,[::]:4420"),
            ("PINION_ISCSI__LISTEN", "127.0.0.1:3261"),
            ("PINION_DEBUG__POISON_RELEASED_PAGES", "true"),
        ]),
    )
    .unwrap();
    assert_eq!(
        c.log,
        LogConfig {
            level: "debug".into(),
            format: LogFormat::Json
        }
    );
    assert_eq!(c.memory.pool, 512 << 20);
    assert_eq!(c.nvme_tcp.max_io_queues, 4);
    assert_eq!(c.nvme_tcp.listen, [addr("0.0.0.0:4420"), addr("[::]:4420")]);
    assert_eq!(c.iscsi.listen, [addr("127.0.0.1:3261")]);
    assert!(c.debug.poison_released_pages);
    // The file's other values survive.
    assert_eq!(c.volume[0].name, "vol1");
}

#[test]
fn bad_env_overrides_are_named() {
    let e = load::load_str(
        "",
        "x",
        env(&[
            ("PINION_LOG__LEVLE", "debug"),
            ("PINION_VOLUME__0__NAME", "x"),
            ("PINION_NVME_TCP__MAX_IO_QUEUES", "many"),
        ]),
    )
    .unwrap_err()
    .to_string();
    for needle in [
        r#"environment variable PINION_LOG__LEVLE: unknown key "levle" in log (did you mean "level"?)"#,
        "environment variable PINION_VOLUME__0__NAME: [[volume]] entries cannot be set from the environment",
        r#"nvme_tcp.max_io_queues: expected an integer, found string "many""#,
    ] {
        assert!(e.contains(needle), "{needle:?} not in:\n{e}");
    }
    let e = load::load_str("", "x", env(&[("PINION_MEMORY__POOL", "lots")]))
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        r#"memory.pool: "lots" is not a size (use e.g. 512MiB, 1GiB, 4096)"#
    );
}

/// The only test that touches the process environment; no other test reads `PINION_*`.
#[test]
fn load_reads_file_and_process_environment() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pinion.toml");
    std::fs::write(&path, "[log]\nlevel = \"warn\"\n").unwrap();
    std::env::set_var("PINION_LOG__LEVEL", "pinion_target=trace,info");
    let loaded = Config::load(&path);
    std::env::remove_var("PINION_LOG__LEVEL");
    assert_eq!(loaded.unwrap().log.level, "pinion_target=trace,info");
    // Without the override, the file's value.
    assert_eq!(
        load::load_file(&path, Vec::new()).unwrap().log.level,
        "warn"
    );
}

#[test]
fn load_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let e = load::load_file(&missing, Vec::new()).unwrap_err();
    assert!(matches!(e, ConfError::Read { .. }), "{e:?}");
    assert!(e.to_string().contains("missing.toml"), "{e}");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[volume]\n").unwrap();
    let e = load::load_file(&bad, Vec::new()).unwrap_err().to_string();
    assert!(e.contains("bad.toml: invalid TOML"), "{e}");
}

#[test]
fn data_path_and_metrics_keys() {
    let c = Config::from_toml_str(
        "[memory]\nsplice_min = \"64KiB\"\nzerocopy_min = 0\n[metrics]\nlisten = \"127.0.0.1:9464\"\n[debug]\nearly_release = true\n",
    )
    .unwrap();
    assert_eq!(c.memory.splice_min, 64 << 10);
    assert_eq!(c.memory.zerocopy_min, 0);
    assert_eq!(c.metrics.listen, Some(addr("127.0.0.1:9464")));
    assert!(c.debug.early_release);
    let e = Config::from_toml_str("[memory]\nsplice_min = \"2MiB\"\n").unwrap_err().to_string();
    assert!(e.contains("memory.splice_min"), "{e}");
    let e = Config::from_toml_str("[metrics]\nlisten = \"nowhere\"\n").unwrap_err().to_string();
    assert!(e.contains("metrics.listen"), "{e}");
    let e = Config::from_toml_str("[metrics]\nport = 1\n").unwrap_err().to_string();
    assert!(e.contains("\"port\" in metrics"), "{e}");
}

#[test]
fn iscsi_settings() {
    let c = Config::from_toml_str(
        "[iscsi]\nportal_group = 7\nnop_interval = 0\nmax_burst_length = \"512KiB\"\nfirst_burst_length = \"128KiB\"\nimmediate_data = false\ninitial_r2t = true\nmax_outstanding_r2t = 4\nqueue_depth = 64\nmax_recv_data_segment_length = 8192\n",
    )
    .unwrap();
    let i = &c.iscsi;
    assert_eq!((i.portal_group, i.nop_interval, i.nop_timeout), (7, 0, 30));
    assert_eq!((i.max_burst_length, i.first_burst_length, i.max_recv_data_segment_length), (512 << 10, 128 << 10, 8192));
    assert!(!i.immediate_data && i.initial_r2t);
    assert_eq!((i.max_outstanding_r2t, i.queue_depth), (4, 64));
    assert_err(
        "[iscsi]\nportal_group = 0\nnop_timeout = 0\ndata_out_timeout = 0\nqueue_depth = 0\nmax_recv_data_segment_length = 100\nmax_outstanding_r2t = 0\n",
        &[
            "iscsi.portal_group: 0 is out of range (1..=65535)",
            "iscsi.nop_timeout: 0 is out of range (1..=3600)",
            "iscsi.data_out_timeout: 0 is out of range (1..=3600)",
            "iscsi.queue_depth: 0 is out of range (1..=1024)",
            "iscsi.max_recv_data_segment_length: 100 is out of range (512..=16777215)",
            "iscsi.max_outstanding_r2t: 0 is out of range (1..=65535)",
        ],
    );
    assert_err(
        "[iscsi]\nmax_burst_length = \"16MiB\"\n",
        &["iscsi.max_burst_length: 16777216 is out of range (512..=16777215)"],
    );
    assert_err(
        "[iscsi]\nmax_burst_length = 4096\nfirst_burst_length = 8192\n",
        &["iscsi.first_burst_length: 8192 is larger than iscsi.max_burst_length (4096)"],
    );
    assert_err("[iscsi]\nnop_intervall = 1\n", &[r#"unknown key "nop_intervall" in iscsi (did you mean "nop_interval"?)"#]);
}

#[test]
fn iscsi_chap_rules() {
    let target = |extra: &str| with_base(&format!("[[iscsi_target]]\niqn = \"iqn.x\"\nluns = [\"v0\"]\n{extra}"));
    let c = Config::from_toml_str(&target(
        "alias = \"disk\"\nchap = { user = \"alice\", secret = \"alice-secret-1\" }\nmutual_chap = { user = \"tgt\", secret = \"target-secret-1\" }\n[[iscsi_target.initiator_chap]]\ninitiator = \"iqn.host-a\"\nuser = \"hosta\"\nsecret = \"host-a-secret-1\"\n",
    ))
    .unwrap();
    let t = &c.iscsi_target[0];
    assert_eq!(t.alias.as_deref(), Some("disk"));
    assert_eq!(t.chap.as_ref().unwrap().user, "alice");
    assert_eq!(t.chap.as_ref().unwrap().secret.0, "alice-secret-1");
    assert_eq!(t.initiator_chap[0].initiator, "iqn.host-a");
    // secrets never show in Debug output
    assert!(!format!("{c:?}").contains("alice-secret-1"));
    assert_err(
        &target("chap = { user = \"alice\", secret = \"short\" }\n"),
        &["iscsi_target[0].chap.secret: is 5 bytes (12..=255 bytes required)"],
    );
    assert_err(
        &target(&format!("chap = {{ user = \"alice\", secret = \"{}\" }}\n", "s".repeat(256))),
        &["iscsi_target[0].chap.secret: is 256 bytes"],
    );
    assert_err(
        &target("chap = { user = \"a b\", secret = \"alice-secret-1\" }\n"),
        &["iscsi_target[0].chap.user: must be 1..=255 printable"],
    );
    assert_err(
        &target("chap = { user = \"alice\", secret = \"same-secret-12\" }\nmutual_chap = { user = \"t\", secret = \"same-secret-12\" }\n"),
        &["iscsi_target[0].mutual_chap.secret: must differ from the one-way CHAP secrets"],
    );
    assert_err(
        &target("mutual_chap = { user = \"t\", secret = \"target-secret-1\" }\n"),
        &["iscsi_target[0].mutual_chap: needs chap or initiator_chap"],
    );
    assert_err(
        &target("chap = { user = \"alice\" }\n"),
        &[r#"missing required key "secret" in iscsi_target[0].chap"#],
    );
    assert_err(
        &target("chap = { user = \"alice\", secret = \"alice-secret-1\", extra = 1 }\n"),
        &[r#"unknown key "extra" in iscsi_target[0].chap"#],
    );
    assert_err(
        &target("[[iscsi_target.initiator_chap]]\ninitiator = \"bob\"\nuser = \"b\"\nsecret = \"bob-secret-123\"\n[[iscsi_target.initiator_chap]]\ninitiator = \"iqn.a\"\nuser = \"a\"\nsecret = \"a-secret-12345\"\n[[iscsi_target.initiator_chap]]\ninitiator = \"IQN.A\"\nuser = \"a\"\nsecret = \"a-secret-12345\"\n"),
        &[
            r#"iscsi_target[0].initiator_chap[0].initiator: "bob" is not an iSCSI name"#,
            r#"iscsi_target[0].initiator_chap[2].initiator: "IQN.A" already has credentials in initiator_chap[1]"#,
        ],
    );
}

#[test]
fn management_socket() {
    let c = Config::from_toml_str("").unwrap();
    assert_eq!(c.management.socket_path(), Some((PathBuf::from(DEFAULT_CTL_SOCKET), false)));
    let c = Config::from_toml_str("[management]\nsocket = \"/tmp/p.sock\"\n").unwrap();
    assert_eq!(c.management.socket_path(), Some((PathBuf::from("/tmp/p.sock"), true)));
    let c = Config::from_toml_str("[management]\nsocket = \"\"\n").unwrap();
    assert_eq!(c.management.socket_path(), None);
    let long = format!("[management]\nsocket = \"/{}\"\n", "x".repeat(120));
    let e = Config::from_toml_str(&long).unwrap_err().to_string();
    assert!(e.contains("management.socket") && e.contains("107 bytes"), "{e}");
    let e = Config::from_toml_str("[management]\nsockt = \"/x\"\n").unwrap_err().to_string();
    assert!(e.contains("did you mean \"socket\""), "{e}");
}

#[test]
fn iscsi_discovery_chap_rules() {
    let c = Config::from_toml_str(&with_base(
        "[iscsi]\ndiscovery_chap = { user = \"disc\", secret = \"discovery-secret-1\" }\ndiscovery_mutual_chap = { user = \"tgt\", secret = \"target-disc-secret\" }\n",
    ))
    .unwrap();
    assert_eq!(c.iscsi.discovery_chap.as_ref().unwrap().user, "disc");
    assert_eq!(c.iscsi.discovery_mutual_chap.as_ref().unwrap().secret.0, "target-disc-secret");
    assert!(!format!("{c:?}").contains("discovery-secret-1"));
    assert!(Config::from_toml_str(BASE).unwrap().iscsi.discovery_chap.is_none());
    assert_err(
        &with_base("[iscsi]\ndiscovery_chap = { user = \"disc\", secret = \"short\" }\n"),
        &["iscsi.discovery_chap.secret: is 5 bytes (12..=255 bytes required)"],
    );
    assert_err(
        &with_base("[iscsi]\ndiscovery_mutual_chap = { user = \"t\", secret = \"target-disc-secret\" }\n"),
        &["iscsi.discovery_mutual_chap: needs discovery_chap"],
    );
    assert_err(
        &with_base("[iscsi]\ndiscovery_chap = { user = \"d\", secret = \"same-secret-12\" }\ndiscovery_mutual_chap = { user = \"t\", secret = \"same-secret-12\" }\n"),
        &["iscsi.discovery_mutual_chap.secret: must differ"],
    );
    assert_err(
        &with_base("[iscsi]\ndiscovery_chap = { user = \"disc\" }\n"),
        &[r#"missing required key "secret" in iscsi.discovery_chap"#],
    );
}

/// Secrets printed by nvme-cli 2.3 (`nvme gen-dhchap-key -s <hex> -l <len> -m <hh> -n <nqn>`),
/// which also checks them (`nvme check-dhchap-key`).
#[test]
fn dhchap_secrets_from_nvme_cli() {
    let s = DhchapSecret::parse("DHHC-1:00:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+KfiaR:").unwrap();
    assert_eq!((s.transform, s.key.clone()), (0, (0u8..32).collect::<Vec<_>>()));
    let s = DhchapSecret::parse("DHHC-1:02:OwgUt3VXOP/YxMovmF8xAc4TOGJIOleayMGOV9zDv0EtslaHTsUjMpddNCYWB5zxcycPSQ==:").unwrap();
    assert_eq!((s.transform, s.key.len()), (2, 48));
    let s = DhchapSecret::parse(
        "DHHC-1:03:IhC351+kbNvAw0V3gkbdX4idQVpm1mWTJRrE1tI5pd2C1fBu5POytZwOGM1/fvmD68YMSDb6wsuyfXV0Y9fBf41Ec6I=:",
    )
    .unwrap();
    assert_eq!((s.transform, s.key.len()), (3, 64));
    assert!(!format!("{s:?}").contains("IhC3"));
    // nvme check-dhchap-key: "CRC mismatch"
    let e = DhchapSecret::parse("DHHC-1:01:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8AAAAA:").unwrap_err();
    assert!(e.contains("CRC-32"), "{e}");
    for (bad, why) in [
        ("DHHC-2:00:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+KfiaR:", "DHHC-1"),
        ("DHHC-1:04:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+KfiaR:", "hash identifier"),
        ("DHHC-1:00:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+KfiaR", "end with"),
        ("DHHC-1:00:AAECAwQF:", "bytes with its CRC"),
        ("DHHC-1:00:not base64!:", "base64"),
        ("DHHC-1", "after the hash"),
    ] {
        let e = DhchapSecret::parse(bad).unwrap_err();
        assert!(e.contains(why) || e.contains("DHHC-1"), "{bad}: {e}");
    }
}

#[test]
fn subsystem_host_tables() {
    const K1: &str = "DHHC-1:00:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+KfiaR:";
    const K2: &str = "DHHC-1:01:WulleCBkG4oCs0iIC3Cit9gBDCLWiZ9PNXuhqytWkBIZkvGy:";
    let sub = |extra: &str| with_base(&format!("[[subsystem]]\nnqn = \"nqn.b\"\nnamespaces = [\"v0\"]\n{extra}"));
    let c = Config::from_toml_str(&sub(&format!(
        "[[subsystem.host]]\nnqn = \"nqn.h1\"\ndhchap_key = \"{K1}\"\ndhchap_ctrl_key = \"{K2}\"\n[[subsystem.host]]\nnqn = \"nqn.h2\"\n"
    )))
    .unwrap();
    // host tables alone: only those hosts; no hosts at all: any host
    assert_eq!(c.subsystem[1].allowed_hosts(), ["nqn.h1", "nqn.h2"]);
    assert_eq!(c.subsystem[0].allowed_hosts(), ["*"]);
    assert_eq!(c.subsystem[1].host[0].dhchap_key.as_ref().unwrap().0, K1);
    assert!(!format!("{c:?}").contains("AAECAw"), "secrets stay out of Debug");
    let c = Config::from_toml_str(&sub(&format!("hosts = [\"nqn.h3\"]\n[[subsystem.host]]\nnqn = \"nqn.h1\"\ndhchap_key = \"{K1}\"\n"))).unwrap();
    assert_eq!(c.subsystem[1].allowed_hosts(), ["nqn.h3", "nqn.h1"]);
    assert_err(
        &sub("[[subsystem.host]]\nnqn = \"nqn.h1\"\ndhchap_key = \"DHHC-1:01:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8AAAAA:\"\n"),
        &["subsystem[1].host[0].dhchap_key: CRC-32 does not match"],
    );
    assert_err(
        &sub(&format!("[[subsystem.host]]\nnqn = \"nqn.h1\"\ndhchap_ctrl_key = \"{K1}\"\n")),
        &["subsystem[1].host[0].dhchap_ctrl_key: needs dhchap_key"],
    );
    assert_err(
        &sub(&format!("[[subsystem.host]]\nnqn = \"nqn.h1\"\ndhchap_key = \"{K1}\"\ndhchap_ctrl_key = \"{K1}\"\n")),
        &["subsystem[1].host[0].dhchap_ctrl_key: must differ"],
    );
    assert_err(
        &sub("[[subsystem.host]]\nnqn = \"h1\"\n[[subsystem.host]]\nnqn = \"nqn.x\"\n[[subsystem.host]]\nnqn = \"nqn.x\"\n"),
        &[r#"subsystem[1].host[0].nqn: "h1" is not a host NQN"#, r#"subsystem[1].host[2].nqn: "nqn.x" is already listed as subsystem[1].host[1]"#],
    );
    assert_err(&sub("[[subsystem.host]]\nnqn = \"nqn.h1\"\nkey = \"x\"\n"), &[r#"unknown key "key" in subsystem[1].host[0]"#]);
    let c = Config::from_toml_str(&sub(&format!("[[subsystem.host]]\nnqn = \"nqn.h1\"\ndhchap_key = \"{K1}\"\ndhchap_hash = \"sha512\"\ndhchap_dhgroup = \"ffdhe4096\"\n"))).unwrap();
    assert_eq!((c.subsystem[1].host[0].dhchap_hash.as_deref(), c.subsystem[1].host[0].dhchap_dhgroup.as_deref()), (Some("sha512"), Some("ffdhe4096")));
    assert_err(&sub("[[subsystem.host]]\nnqn = \"nqn.h1\"\ndhchap_hash = \"md5\"\n"), &["subsystem[1].host[0].dhchap_hash"]);
    assert_err(&sub("[[subsystem.host]]\nnqn = \"nqn.h1\"\ndhchap_dhgroup = \"ffdhe1024\"\n"), &["subsystem[1].host[0].dhchap_dhgroup"]);
}

#[test]
fn runtime_cores() {
    assert_eq!(Config::from_toml_str("").unwrap().runtime.cores, None);
    assert_eq!(Config::from_toml_str("[runtime]\ncores = 2\n").unwrap().runtime.cores, Some(2));
    assert_err("[runtime]\ncores = 0\n", &["runtime.cores: 0 is out of range (1..=1024)"]);
    assert_err("[runtime]\ncores = 1025\n", &["runtime.cores: 1025 is out of range (1..=1024)"]);
    let e = Config::from_toml_str("[runtime]\ncores = \"two\"\n").unwrap_err().to_string();
    assert!(e.contains("runtime.cores"), "{e}");
    let e = Config::from_toml_str("[runtime]\nthreads = 2\n").unwrap_err().to_string();
    assert!(e.contains("\"threads\" in runtime"), "{e}");
}

#[test]
fn runtime_busy_poll() {
    assert_eq!(Config::from_toml_str("").unwrap().runtime.busy_poll_us, 0, "off by default");
    assert_eq!(Config::from_toml_str("[runtime]\nbusy_poll_us = 50\n").unwrap().runtime.busy_poll_us, 50);
    assert_err("[runtime]\nbusy_poll_us = 10001\n", &["runtime.busy_poll_us: 10001 is out of range (0..=10000)"]);
    let e = Config::from_toml_str("[runtime]\nbusy_poll_us = -1\n").unwrap_err().to_string();
    assert!(e.contains("runtime.busy_poll_us"), "{e}");
}

#[test]
fn listener_tls_modes() {
    let c = Config::from_toml_str(
        "[nvme_tcp]\nlisten = [\"127.0.0.1:4420\", \"127.0.0.1:4421\"]\ntls = \"optional\"\n\
         [[nvme_tcp.listener_tls]]\naddr = \"127.0.0.1:4421\"\ntls = \"required\"\n",
    )
    .unwrap();
    assert_eq!(c.nvme_tcp.tls_for(addr("127.0.0.1:4420")), TlsMode::Optional);
    assert_eq!(c.nvme_tcp.tls_for(addr("127.0.0.1:4421")), TlsMode::Required);
    let bad = Config::from_toml_str(
        "[nvme_tcp]\nlisten = [\"127.0.0.1:4420\"]\n[[nvme_tcp.listener_tls]]\naddr = \"127.0.0.1:4499\"\ntls = \"required\"\n",
    );
    let err = bad.and_then(|c| c.validate().map(|_| c)).unwrap_err().to_string();
    assert!(err.contains("listener_tls[0].addr"), "{err}");
    assert!(Config::from_toml_str("[nvme_tcp]\ntls = \"sometimes\"\n").is_err());
}

#[test]
fn rbd_volumes_need_pool_and_image_and_own_their_keys() {
    let ok = with_base(
        "[[volume]]\nname = \"r\"\nbackend = \"rbd\"\npool = \"rbd\"\nimage = \"img\"\nnamespace = \"ns\"\n\
         ceph_conf = \"/etc/ceph/ceph.conf\"\nclient = \"pinion\"\nkeyring = \"/etc/ceph/k\"\nrbd_timeout = 30\nread_only = true\n",
    );
    let c = Config::from_toml_str(&ok).unwrap();
    let v = &c.volume[1];
    assert_eq!(v.backend, BackendKind::Rbd);
    assert_eq!((v.pool.as_deref(), v.image.as_deref(), v.namespace.as_deref()), (Some("rbd"), Some("img"), Some("ns")));
    assert_eq!((v.client.as_deref(), v.rbd_timeout, v.read_only), (Some("pinion"), Some(30), true));
    assert_err(
        &with_base("[[volume]]\nname = \"r\"\nbackend = \"rbd\"\nsize = \"1GiB\"\npath = \"/x\"\n"),
        &[
            r#"volume[1].pool: required for backend "rbd""#,
            r#"volume[1].image: required for backend "rbd""#,
            r#"volume[1].size: not allowed for backend "rbd""#,
            r#"volume[1].path: not allowed for backend "rbd""#,
        ],
    );
    assert_err(
        &with_base("[[volume]]\nname = \"r\"\nbackend = \"rbd\"\npool = \"\"\nimage = \"i\"\n"),
        &["volume[1].pool: must be a non-empty name"],
    );
    assert_err(
        &with_base("[[volume]]\nname = \"r\"\nbackend = \"rbd\"\npool = \"p\"\nimage = \"i\"\nrbd_timeout = 4000\n"),
        &["volume[1].rbd_timeout: 4000 is out of range"],
    );
    assert_err(
        &with_base("[[volume]]\nname = \"f\"\nbackend = \"ram\"\nsize = \"1MiB\"\npool = \"rbd\"\nrbd_timeout = 3\n"),
        &[r#"volume[1].pool: only for backend "rbd", not "ram""#, r#"volume[1].rbd_timeout: only for backend "rbd""#],
    );
}

#[test]
fn ana_group_rules() {
    let two = "[nvme_tcp]\nlisten = [\"127.0.0.1:4420\", \"127.0.0.1:4421\"]\n";
    let c = Config::from_toml_str(&with_base(&format!(
        "{two}[[ana_group]]\nid = 2\nvolumes = [\"v0\"]\noptimized = [\"127.0.0.1:4420\"]\ninaccessible = [\"127.0.0.1:4421\"]\n"
    )))
    .unwrap();
    let g = &c.ana_group[0];
    assert_eq!(
        g.ports().collect::<Vec<_>>(),
        [(addr("127.0.0.1:4420"), ana::AnaStateConfig::Optimized), (addr("127.0.0.1:4421"), ana::AnaStateConfig::Inaccessible)]
    );
    assert_err(
        &with_base(&format!("{two}[[ana_group]]\nid = 0\n[[ana_group]]\nid = 33\n")),
        &["ana_group[0].id: 0 is out of range (1..=32)", "ana_group[1].id: 33 is out of range (1..=32)"],
    );
    assert_err(
        &with_base(&format!("{two}[[ana_group]]\nid = 3\n[[ana_group]]\nid = 3\n")),
        &["ana_group[1].id: 3 is already used by ana_group[0]"],
    );
    assert_err(
        &with_base(&format!("{two}[[ana_group]]\nid = 1\nvolumes = [\"v9\"]\n[[ana_group]]\nid = 2\nvolumes = [\"v0\"]\n[[ana_group]]\nid = 3\nvolumes = [\"v0\"]\n")),
        &[r#"ana_group[0].volumes[0]: "v9" is not a [[volume]] name"#, r#"ana_group[2].volumes[0]: volume "v0" is already in ana_group[1]"#],
    );
    assert_err(
        &with_base(&format!("{two}[[ana_group]]\nid = 1\noptimized = [\"127.0.0.1:4422\"]\nchange = [\"127.0.0.1:4420\"]\ninaccessible = [\"127.0.0.1:4420\"]\n")),
        &[
            "ana_group[0].optimized[0]: 127.0.0.1:4422 is not one of nvme_tcp.listen or iscsi.listen",
            r#"ana_group[0].change[0]: 127.0.0.1:4420 is already given the state "inaccessible" in this group"#,
        ],
    );
    assert_err(&with_base("[[ana_group]]\nid = 1\nstandby = []\n"), &["unknown key \"standby\" in ana_group[0]"]);
}
