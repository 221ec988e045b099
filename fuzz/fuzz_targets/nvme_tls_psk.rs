#![no_main]
//! NVMe/TCP TLS key material from hostile input: the PSK interchange format
//! (`NVMeTLSkey-1:..`, from a config file), the PSK identity a host offers in
//! its ClientHello, and the `pre_shared_key` extension body the server reads
//! identities from before the handshake. Whatever parses must round-trip.

use libfuzzer_sys::fuzz_target;
use pinion_transport::tls::psk::{offered_identities, ConfiguredPsk, Identity, PskTable};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(k) = ConfiguredPsk::parse(&text) {
        assert_eq!(ConfiguredPsk::parse(&k.encode()).as_ref(), Ok(&k));
        assert!(matches!(k.key.len(), 32 | 48));
    }
    if let Ok(id) = Identity::parse(data) {
        assert_eq!(id.format().as_bytes(), data);
    }
    let table = PskTable::default();
    for id in offered_identities(data) {
        assert!(id.len() <= data.len());
        let _ = Identity::parse(id);
        assert!(table.get(id).is_none());
    }
});
