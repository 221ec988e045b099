//! The iSCSI side of `pinion perf`.

use super::{Engine, PerfError, Setup};
use nvme_types::tcp::Digests;

/// `iscsi://[USER[%SECRET]@]HOST[:PORT]/IQN/LUN`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IscsiUrl {
    pub user: Option<String>,
    pub secret: Option<String>,
    pub host: String,
    pub port: u16,
    pub iqn: String,
    pub lun: u64,
}

impl IscsiUrl {
    pub fn parse(rest: &str) -> Result<IscsiUrl, String> {
        let (auth, rest) = match rest.rsplit_once('@') {
            Some((a, r)) => (Some(a), r),
            None => (None, rest),
        };
        let (user, secret) = match auth {
            Some(a) => match a.split_once('%') {
                Some((u, s)) => (Some(u.to_string()), Some(s.to_string())),
                None => (Some(a.to_string()), None),
            },
            None => (None, None),
        };
        let (authority, path) = rest.split_once('/').ok_or("iscsi URL needs /IQN/LUN after HOST:PORT")?;
        let (host, port) = super::split_host_port(authority, 3260)?;
        let (iqn, lun) = path.rsplit_once('/').ok_or("iscsi URL needs /IQN/LUN")?;
        let lun: u64 = lun.parse().map_err(|_| format!("LUN {lun:?} is not a number"))?;
        if iqn.is_empty() || iqn.len() > 223 {
            return Err(format!("target name {iqn:?} must be 1 to 223 bytes"));
        }
        if lun > 0x3fff {
            return Err(format!("LUN {lun} is beyond the flat addressing range (16383)"));
        }
        Ok(IscsiUrl { user: user.filter(|u| !u.is_empty()), secret, host, port, iqn: iqn.to_string(), lun })
    }
}

#[derive(Clone, Debug)]
pub struct IscsiOpts {
    pub digests: Digests,
    pub sessions: u16,
    pub qd: u16,
    pub max_io: usize,
    pub chap_user: Option<String>,
    pub chap_secret: Option<String>,
    pub initiator_name: String,
}

pub fn connect(_url: &IscsiUrl, _opts: &IscsiOpts) -> Result<(Setup, Vec<Box<dyn Engine>>), PerfError> {
    Err(PerfError::Usage("the iSCSI initiator is not built yet".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = IscsiUrl::parse("127.0.0.1:3262/iqn.2026-11.io.pinion:vol1/0").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.iqn.as_str(), u.lun, u.user), ("127.0.0.1", 3262, "iqn.2026-11.io.pinion:vol1", 0, None));
        let u = IscsiUrl::parse("bob%s3cr3t-pw@h/iqn.x/3").unwrap();
        assert_eq!((u.user.as_deref(), u.secret.as_deref(), u.port, u.lun), (Some("bob"), Some("s3cr3t-pw"), 3260, 3));
        let u = IscsiUrl::parse("bob@[::1]:3300/iqn.x/1").unwrap();
        assert_eq!((u.user.as_deref(), u.secret, u.host.as_str(), u.port), (Some("bob"), None, "::1", 3300));
        assert!(IscsiUrl::parse("h:3260/iqn.x").is_err());
        assert!(IscsiUrl::parse("h:3260/iqn.x/x").is_err());
        assert!(IscsiUrl::parse("h:3260//0").is_err());
    }
}
