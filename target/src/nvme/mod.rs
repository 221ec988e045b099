//! The NVMe target: one module per spec area, as in Linux
//! `drivers/nvme/target/`. `subsys` holds subsystems, namespaces and the
//! registry; `ctrl` a controller's state; `queue` drives one NVMe/TCP
//! connection (an admin or I/O queue) and dispatches each command to
//! `fabrics` (Connect, properties), `admin`, `discovery` or `io`; `fused`
//! decides how fused Compare + Write pairs are formed. A command
//! handler's error type is the NVMe [`Status`](nvme_types::Status) it
//! completes with.

pub mod admin;
pub mod aen;
pub mod ana;
pub mod auth;
pub mod ctrl;
pub mod discovery;
pub mod fabrics;
pub mod fused;
pub mod io;
pub mod queue;
pub mod resize;
pub mod resv;
pub mod subsys;
pub mod tls;
