//! The handshake worker: a server shard's second thread computes new connections' first flights,
//! so that the shard's established connections do not wait for them.
//!
//! What rustls does with a ClientHello (the key exchange, the certificate signature, the key
//! schedule) is most of what a full handshake costs a server: about 0.8 ms of CPU per
//! connection on a 2.5 GHz core. quinn-proto runs it inside `Endpoint::accept`, in one piece;
//! on the shard thread it would hold back every packet of the shard's established connections
//! for that long, once per new connection. So each server shard starts a worker thread that
//! inherits the shard's core and runs in the idle scheduling class (`SCHED_IDLE`): the kernel
//! runs it when the shard waits for packets and stops it the moment the shard has work again. The shard
//! keeps everything else, and quinn-proto's state never leaves the shard thread:
//!
//! 1. When a new connection's Initial is queued, the shard reserves the CID `accept` will give
//!    the connection ([`crate::routing::cid::reserve`]) and sends the worker a copy of the
//!    datagram with that CID and the original destination CID ([`HandshakeWorker::submit`]).
//! 2. The worker decrypts the Initial (its keys follow from its destination CID), takes the
//!    ClientHello from its CRYPTO frames, writes the server's transport parameters (the ones
//!    the shard's last inline handshake used, with this connection's CIDs and stateless-reset
//!    token) and starts a session with them, through the shard's own crypto configuration.
//!    Reading the ClientHello into that session is the expensive part. It then asks the
//!    session ahead for what quinn-proto will ask next (the first flight and its packet keys,
//!    the first 1-RTT key update's keys), sends all back ([`Prepared`]) and wakes the shard.
//! 3. The shard arms its [`ShardCrypto`] with the prepared session and calls `accept`.
//!    quinn-proto reserves the same CID, builds the transport parameters and asks the crypto
//!    configuration for a session: if the parameters are the ones the session was prepared
//!    with (ignoring the random grease parameter and order quinn-proto adds), it gets the
//!    prepared one, wrapped in a `Replay`. quinn-proto then feeds it the ClientHello, which
//!    it has already read, and takes the first flight rustls wrote and the keys the worker
//!    derived.
//!
//! Where something does not fit (the worker could not read the Initial, the ClientHello
//! spans several packets, the parameters differ, the shard's first handshake, which teaches it
//! its transport parameters) the first flight is computed inside `accept` as it would be
//! without a worker. The worker changes where a first flight is computed, never what it is.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, TryLockError};
use std::thread::JoinHandle;

use bytes::BytesMut;
use quinn_proto::coding::Codec;
use quinn_proto::crypto::{
    self, ExportKeyingMaterialError, HeaderKey, KeyPair, Keys, PacketKey, UnsupportedVersion,
};
use quinn_proto::transport_parameters::TransportParameters;
use quinn_proto::{ConnectionId, Side, TransportError, TransportErrorCode, VarInt};

use crate::datapath::Waker;
use crate::routing::cid::MAX_CID_LEN;

/// Transport parameter ids of the four values that differ between connections of one server
/// (RFC 9000 §18.2).
const ORIGINAL_DST_CID: u64 = 0x00;
const STATELESS_RESET_TOKEN: u64 = 0x02;
const INITIAL_SRC_CID: u64 = 0x0f;
const RETRY_SRC_CID: u64 = 0x10;

/// A server shard's crypto configuration: the shared one, plus the session prepared for the
/// `accept` the shard is about to run, and what it learned of its transport parameters.
pub struct ShardCrypto {
    inner: Arc<dyn crypto::ServerConfig>,
    state: Mutex<ConfigState>,
}

#[derive(Default)]
struct ConfigState {
    /// The session prepared for the next `accept`, until quinn-proto asks for one.
    armed: Option<Box<Prepared>>,
    /// The armed session was handed out (it matched).
    used: bool,
    /// The transport parameters of the shard's first inline handshake, as quinn-proto wrote
    /// them: what every connection's parameters are, but for its CIDs and reset token.
    template: Option<Arc<[u8]>>,
}

impl ShardCrypto {
    /// Wraps the shared configuration for one shard.
    pub fn new(inner: Arc<dyn crypto::ServerConfig>) -> ShardCrypto {
        ShardCrypto {
            inner,
            state: Mutex::new(ConfigState::default()),
        }
    }

    fn state(&self) -> MutexGuard<'_, ConfigState> {
        // The state is valid whatever a panicking holder left in it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Offers `prepared` to the next session this configuration starts.
    pub fn arm(&self, prepared: Box<Prepared>) {
        let mut state = self.state();
        state.armed = Some(prepared);
        state.used = false;
    }

    /// Ends an `accept`: whether it took the armed session. One it did not take is dropped.
    pub fn disarm(&self) -> bool {
        let mut state = self.state();
        state.armed = None;
        std::mem::take(&mut state.used)
    }

    /// The transport parameters to prepare sessions with, once an inline handshake taught them.
    pub fn template(&self) -> Option<Arc<[u8]>> {
        self.state().template.clone()
    }
}

impl crypto::ServerConfig for ShardCrypto {
    fn initial_keys(
        &self,
        version: u32,
        dst_cid: &ConnectionId,
    ) -> Result<Keys, UnsupportedVersion> {
        self.inner.initial_keys(version, dst_cid)
    }

    fn retry_tag(&self, version: u32, orig_dst_cid: &ConnectionId, packet: &[u8]) -> [u8; 16] {
        self.inner.retry_tag(version, orig_dst_cid, packet)
    }

    fn start_session(
        self: Arc<Self>,
        version: u32,
        params: &TransportParameters,
    ) -> Box<dyn crypto::Session> {
        let mut state = self.state();
        if let Some(prepared) = state.armed.take() {
            if prepared.version == version && normalized(params) == Some(prepared.params) {
                state.used = true;
                let prepared = *prepared;
                return Box::new(Replay {
                    inner: prepared.session,
                    read: prepared.read,
                    replayed: 0,
                    outcome: Some(prepared.outcome),
                    initial_keys: Mutex::new(Some(prepared.initial_keys)),
                    written: prepared.written,
                    next_1rtt_keys: prepared.next_1rtt_keys,
                });
            }
        }
        if state.template.is_none() {
            let mut encoded = Vec::new();
            params.write(&mut encoded);
            state.template = Some(encoded.into());
        }
        drop(state);
        self.inner.clone().start_session(version, params)
    }
}

/// `params` as they read back from the wire: without quinn-proto's random grease parameter
/// and write order, which do not change what they say.
fn normalized(params: &TransportParameters) -> Option<TransportParameters> {
    let mut encoded = Vec::new();
    params.write(&mut encoded);
    TransportParameters::read(Side::Client, &mut &encoded[..]).ok()
}

/// A session the worker started and fed the ClientHello, and what quinn-proto will ask of it
/// next, computed ahead.
pub struct Prepared {
    version: u32,
    /// The transport parameters it was started with, normalized.
    params: TransportParameters,
    session: Box<dyn crypto::Session>,
    /// The handshake bytes it read.
    read: Vec<u8>,
    /// What reading them returned.
    outcome: Result<bool, TransportError>,
    /// The server's Initial keys for the destination CID of the client's Initial, which the
    /// connection's Initial packet space uses.
    initial_keys: (ConnectionId, Keys),
    /// What the session wrote once it had read the ClientHello, call by call: each
    /// `write_handshake`'s handshake bytes and key change, up to the first with neither.
    written: VecDeque<(Vec<u8>, Option<Keys>)>,
    /// The keys of the first 1-RTT key update, which quinn-proto takes as soon as it has the
    /// 1-RTT keys; `None` if the session wrote none.
    next_1rtt_keys: Option<KeyPair<Box<dyn PacketKey>>>,
}

/// What the worker made of a job.
pub enum FirstFlight {
    /// The session to accept the connection with.
    Prepared(Box<Prepared>),
    /// Nothing: the shard computes the first flight in `accept`.
    Inline,
    /// Reading the ClientHello panicked (a bug, reported by the panic hook): the connection
    /// is dropped rather than tried again on the shard.
    Failed,
}

/// A finished job.
pub struct Done {
    /// The id [`HandshakeWorker::submit`] returned.
    pub id: u64,
    pub flight: FirstFlight,
}

struct Job {
    id: u64,
    datagram: Vec<u8>,
    template: Arc<[u8]>,
    cid: ConnectionId,
    orig_dst_cid: ConnectionId,
}

/// A shard's handshake worker.
pub struct HandshakeWorker {
    config: Arc<ShardCrypto>,
    queues: Arc<Queues>,
    next_id: u64,
    worker: Option<JoinHandle<()>>,
}

/// What the shard and its worker share. The shard must never wait for the worker, which the
/// kernel does not run while the shard (or anything else on its core) is busy: a real-time
/// shard spinning on a lock the worker holds would spin until the kernel's real-time
/// throttling stopped it, about a second (a channel's receiver spins so while a message is
/// being written). So the shard takes both locks with `try_lock` only: a job it cannot hand
/// over is computed inline, and finished jobs it cannot take now it takes when the worker
/// wakes it, which the worker does after each one.
#[derive(Default)]
struct Queues {
    /// Jobs not started yet, oldest first; `None` once the shard is gone.
    jobs: Mutex<Option<VecDeque<Job>>>,
    /// Signalled when a job is queued or the shard is gone.
    queued: Condvar,
    /// Finished jobs, oldest first.
    done: Mutex<VecDeque<Done>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Both queues are valid whatever a panicking holder left in them.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn try_lock<T>(m: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
    match m.try_lock() {
        Ok(guard) => Some(guard),
        Err(TryLockError::Poisoned(e)) => Some(e.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    }
}

impl HandshakeWorker {
    /// Starts the worker thread for the shard named `name` (on the calling thread's cores),
    /// preparing sessions through `config` and waking the shard with `waker`; `reset_key` is
    /// the key the endpoint makes stateless-reset tokens with.
    pub fn start(
        name: String,
        config: Arc<ShardCrypto>,
        reset_key: Arc<ring::hmac::Key>,
        waker: Waker,
    ) -> std::io::Result<HandshakeWorker> {
        let queues = Arc::new(Queues {
            jobs: Mutex::new(Some(VecDeque::new())),
            ..Queues::default()
        });
        let shared = queues.clone();
        let crypto = config.inner.clone();
        let worker = std::thread::Builder::new().name(name).spawn(move || {
            if let Err(e) = crate::datapath::lower_thread_priority() {
                tracing::warn!(error = %e, "the handshake worker runs at the shard's priority");
            }
            loop {
                let job = {
                    let mut jobs = lock(&shared.jobs);
                    loop {
                        match jobs.as_mut() {
                            None => return,
                            Some(queue) => {
                                if let Some(job) = queue.pop_front() {
                                    break job;
                                }
                            }
                        }
                        jobs = shared
                            .queued
                            .wait(jobs)
                            .unwrap_or_else(PoisonError::into_inner);
                    }
                };
                let id = job.id;
                let flight =
                    match catch_unwind(AssertUnwindSafe(|| prepare(&crypto, &reset_key, job))) {
                        Ok(Some(prepared)) => FirstFlight::Prepared(Box::new(prepared)),
                        Ok(None) => FirstFlight::Inline,
                        Err(_) => FirstFlight::Failed,
                    };
                lock(&shared.done).push_back(Done { id, flight });
                waker.wake();
            }
        })?;
        Ok(HandshakeWorker {
            config,
            queues,
            next_id: 0,
            worker: Some(worker),
        })
    }

    /// The shard's crypto configuration, to accept connections with.
    pub fn config(&self) -> &Arc<ShardCrypto> {
        &self.config
    }

    /// Asks the worker to prepare the session of a new connection whose first datagram is
    /// `datagram`, for `accept` to give it the CID `cid` (reserved by the caller). `None` when
    /// no job can be queued: the shard has not learned its transport parameters yet, or the
    /// worker holds the queue this instant.
    pub fn submit(
        &mut self,
        datagram: Vec<u8>,
        cid: ConnectionId,
        orig_dst_cid: ConnectionId,
    ) -> Option<u64> {
        let template = self.config.template()?;
        let id = self.next_id;
        let job = Job {
            id,
            datagram,
            template,
            cid,
            orig_dst_cid,
        };
        try_lock(&self.queues.jobs)?.as_mut()?.push_back(job);
        self.queues.queued.notify_one();
        self.next_id += 1;
        Some(id)
    }

    /// Hands `take` the finished jobs, oldest first, unless the worker is adding one right now
    /// (it wakes the shard when it has). Never waits.
    pub fn take_done(&self, mut take: impl FnMut(Done)) {
        let Some(mut done) = try_lock(&self.queues.done) else {
            return;
        };
        while let Some(d) = done.pop_front() {
            take(d);
        }
    }

    /// Takes job `id` back if the worker has not started it, for the shard to compute the
    /// first flight inline; whether it did. Never waits: a job the worker is on, or one it
    /// cannot take back this instant, stays the worker's. (Both reading one ClientHello would
    /// race for its single-use ticket, and the loser would refuse the client's 0-RTT data.)
    pub fn take_back(&self, id: u64) -> bool {
        let Some(mut jobs) = try_lock(&self.queues.jobs) else {
            return false;
        };
        let Some(queue) = jobs.as_mut() else {
            return false;
        };
        let before = queue.len();
        queue.retain(|job| job.id != id);
        queue.len() < before
    }
}

impl Drop for HandshakeWorker {
    fn drop(&mut self) {
        // No job queue ends the worker's loop.
        *lock(&self.queues.jobs) = None;
        self.queues.queued.notify_one();
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// The worker's job: the session for `job`'s connection with the ClientHello read (or found
/// invalid), or `None` when the Initial cannot be read here or does not hold the whole
/// ClientHello.
fn prepare(
    crypto: &Arc<dyn crypto::ServerConfig>,
    reset_key: &ring::hmac::Key,
    mut job: Job,
) -> Option<Prepared> {
    let initial = open_initial(crypto.as_ref(), &mut job.datagram)?;
    let retry_src_cid = (initial.dst_cid != job.orig_dst_cid).then_some(initial.dst_cid);
    let tag = ring::hmac::sign(reset_key, &job.cid);
    let reset_token = tag.as_ref().get(..16)?;
    let encoded = server_params(
        &job.template,
        &[
            (ORIGINAL_DST_CID, &job.orig_dst_cid[..]),
            (STATELESS_RESET_TOKEN, reset_token),
            (INITIAL_SRC_CID, &job.cid[..]),
        ],
        retry_src_cid.as_ref().map(|cid| &cid[..]),
    )?;
    let params = TransportParameters::read(Side::Client, &mut &encoded[..]).ok()?;
    let mut session = crypto.clone().start_session(initial.version, &params);
    let outcome = session.read_handshake(&initial.crypto);
    if outcome == Ok(false) {
        // The ClientHello goes on in a later packet: nothing was computed, and the shard reads
        // it whole.
        return None;
    }
    // What quinn-proto asks next, after a ClientHello it read without error: the first flight
    // and its keys, in calls until one has nothing (`Connection::write_crypto`), and the next
    // 1-RTT keys, the moment it gets the 1-RTT keys.
    let mut written = VecDeque::new();
    let mut next_1rtt_keys = None;
    if outcome.is_ok() {
        loop {
            let mut bytes = Vec::new();
            let keys = session.write_handshake(&mut bytes);
            if bytes.is_empty() && keys.is_none() {
                break;
            }
            written.push_back((bytes, keys));
        }
        next_1rtt_keys = session.next_1rtt_keys();
    }
    Some(Prepared {
        version: initial.version,
        params,
        session,
        read: initial.crypto,
        outcome,
        initial_keys: (initial.dst_cid, initial.keys),
        written,
        next_1rtt_keys,
    })
}

/// `template` (encoded transport parameters) with the per-connection values replaced by
/// `values` and, if given, the Retry source CID; `None` if the template does not parse.
fn server_params(
    template: &[u8],
    values: &[(u64, &[u8])],
    retry: Option<&[u8]>,
) -> Option<Vec<u8>> {
    fn put(out: &mut Vec<u8>, id: u64, value: &[u8]) -> Option<()> {
        VarInt::from_u64(id).ok()?.encode(out);
        VarInt::from_u64(value.len() as u64).ok()?.encode(out);
        out.extend_from_slice(value);
        Some(())
    }
    let mut out = Vec::with_capacity(template.len() + 64);
    let mut rest = template;
    while !rest.is_empty() {
        let id = VarInt::decode(&mut rest).ok()?.into_inner();
        let len = usize::try_from(VarInt::decode(&mut rest).ok()?.into_inner()).ok()?;
        let value = rest.get(..len)?;
        rest = &rest[len..];
        if !matches!(
            id,
            ORIGINAL_DST_CID | STATELESS_RESET_TOKEN | INITIAL_SRC_CID | RETRY_SRC_CID
        ) {
            put(&mut out, id, value)?;
        }
    }
    for &(id, value) in values {
        put(&mut out, id, value)?;
    }
    if let Some(cid) = retry {
        put(&mut out, RETRY_SRC_CID, cid)?;
    }
    Some(out)
}

/// What the worker reads from a client's first Initial packet.
struct Initial {
    version: u32,
    dst_cid: ConnectionId,
    /// The server's Initial keys for `dst_cid`.
    keys: Keys,
    /// The CRYPTO data from offset 0 on, as far as it is contiguous: the ClientHello, or its
    /// start.
    crypto: Vec<u8>,
}

/// Decrypts the first packet of `datagram`, a client's Initial (RFC 9000 §17.2.2, RFC 9001
/// §5), in place. `None` if it is not one, does not decrypt, or carries frames other than
/// CRYPTO, PING and PADDING.
fn open_initial(crypto: &dyn crypto::ServerConfig, datagram: &mut [u8]) -> Option<Initial> {
    let first = *datagram.first()?;
    // Long header, packet type Initial (0 in QUIC v1 and its drafts).
    if first & 0x80 == 0 || first & 0x30 != 0 {
        return None;
    }
    let mut r: &[u8] = datagram.get(1..)?;
    let version = u32::from_be_bytes(take(&mut r, 4)?.try_into().ok()?);
    let dcid_len = usize::from(*take(&mut r, 1)?.first()?);
    if dcid_len > MAX_CID_LEN {
        return None;
    }
    let dst_cid = ConnectionId::new(take(&mut r, dcid_len)?);
    let scid_len = usize::from(*take(&mut r, 1)?.first()?);
    take(&mut r, scid_len)?;
    let token_len = usize::try_from(VarInt::decode(&mut r).ok()?.into_inner()).ok()?;
    take(&mut r, token_len)?;
    let length = usize::try_from(VarInt::decode(&mut r).ok()?.into_inner()).ok()?;
    let pn_offset = datagram.len() - r.len();
    let end = pn_offset.checked_add(length)?;
    let packet = datagram.get_mut(..end)?;
    let keys = crypto.initial_keys(version, &dst_cid).ok()?;
    // Header protection samples 16 bytes from 4 past the packet number's start.
    if packet.len() < pn_offset + 4 + keys.header.remote.sample_size() {
        return None;
    }
    keys.header.remote.decrypt(pn_offset, packet);
    let pn_len = usize::from(packet[0] & 0x03) + 1;
    let header_len = pn_offset + pn_len;
    // The first packet's number is its truncated number (quinn-proto expands it from 0).
    let number = packet[pn_offset..header_len]
        .iter()
        .fold(0u64, |n, b| n << 8 | u64::from(*b));
    let (header, sealed) = packet.split_at(header_len);
    if sealed.len() < keys.packet.remote.tag_len() {
        return None;
    }
    let mut payload = BytesMut::from(sealed);
    keys.packet
        .remote
        .decrypt(number, header, &mut payload)
        .ok()?;
    Some(Initial {
        version,
        dst_cid,
        crypto: crypto_prefix(&payload)?,
        keys,
    })
}

/// Takes `n` bytes off the front of `r`.
fn take<'a>(r: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    let head = r.get(..n)?;
    *r = &r[n..];
    Some(head)
}

/// The CRYPTO data of a decrypted Initial payload from offset 0 on, as far as it is
/// contiguous; `None` if there is none, or a frame is not CRYPTO, PING or PADDING.
fn crypto_prefix(mut payload: &[u8]) -> Option<Vec<u8>> {
    let mut frames: Vec<(u64, &[u8])> = Vec::new();
    while !payload.is_empty() {
        match VarInt::decode(&mut payload).ok()?.into_inner() {
            // PADDING, PING.
            0x00 | 0x01 => {}
            // CRYPTO: offset, length, data.
            0x06 => {
                let offset = VarInt::decode(&mut payload).ok()?.into_inner();
                let len = usize::try_from(VarInt::decode(&mut payload).ok()?.into_inner()).ok()?;
                frames.push((offset, take(&mut payload, len)?));
            }
            _ => return None,
        }
    }
    frames.sort_by_key(|&(offset, _)| offset);
    let mut data = Vec::new();
    for (offset, bytes) in frames {
        let start = usize::try_from(offset).ok()?;
        if start > data.len() {
            break;
        }
        let skip = data.len() - start;
        if let Some(new) = bytes.get(skip..) {
            data.extend_from_slice(new);
        }
    }
    (!data.is_empty()).then_some(data)
}

/// A prepared session as quinn-proto gets it in `accept`: it takes the handshake bytes the
/// worker already read without reading them again (returning what reading them returned),
/// answers the calls the worker made ahead with their results (see [`Prepared`]), and passes
/// everything else to the session.
struct Replay {
    inner: Box<dyn crypto::Session>,
    /// The bytes the session already read.
    read: Vec<u8>,
    /// How many of them quinn-proto has fed so far.
    replayed: usize,
    /// What reading them returned, until quinn-proto has fed them all.
    outcome: Option<Result<bool, TransportError>>,
    /// Until quinn-proto asks for them (through `&self`, hence the lock, taken once).
    initial_keys: Mutex<Option<(ConnectionId, Keys)>>,
    written: VecDeque<(Vec<u8>, Option<Keys>)>,
    next_1rtt_keys: Option<KeyPair<Box<dyn PacketKey>>>,
}

impl crypto::Session for Replay {
    fn initial_keys(&self, dst_cid: &ConnectionId, side: Side) -> Keys {
        match lock(&self.initial_keys).take() {
            Some((cid, keys)) if cid == *dst_cid && side == Side::Server => keys,
            _ => self.inner.initial_keys(dst_cid, side),
        }
    }

    fn handshake_data(&self) -> Option<Box<dyn std::any::Any>> {
        self.inner.handshake_data()
    }

    fn peer_identity(&self) -> Option<Box<dyn std::any::Any>> {
        self.inner.peer_identity()
    }

    fn early_crypto(&self) -> Option<(Box<dyn HeaderKey>, Box<dyn PacketKey>)> {
        self.inner.early_crypto()
    }

    fn early_data_accepted(&self) -> Option<bool> {
        self.inner.early_data_accepted()
    }

    fn is_handshaking(&self) -> bool {
        self.inner.is_handshaking()
    }

    fn read_handshake(&mut self, mut buf: &[u8]) -> Result<bool, TransportError> {
        let mut data_ready = false;
        let left = &self.read[self.replayed..];
        if !left.is_empty() {
            let n = left.len().min(buf.len());
            // quinn-proto feeds the same CRYPTO stream the worker read from the same packet.
            if buf[..n] != left[..n] {
                return Err(TransportError {
                    code: TransportErrorCode::PROTOCOL_VIOLATION,
                    frame: None,
                    reason: "CRYPTO data differs from the data first received".into(),
                });
            }
            self.replayed += n;
            buf = &buf[n..];
            if self.replayed == self.read.len() {
                if let Some(outcome) = self.outcome.take() {
                    data_ready = outcome?;
                }
            }
        }
        if !buf.is_empty() {
            data_ready |= self.inner.read_handshake(buf)?;
        }
        Ok(data_ready)
    }

    fn transport_parameters(&self) -> Result<Option<TransportParameters>, TransportError> {
        self.inner.transport_parameters()
    }

    fn write_handshake(&mut self, buf: &mut Vec<u8>) -> Option<Keys> {
        if self.replayed < self.read.len() {
            // Before the whole ClientHello, a session has nothing to write.
            return None;
        }
        match self.written.pop_front() {
            Some((bytes, keys)) => {
                buf.extend_from_slice(&bytes);
                keys
            }
            None => self.inner.write_handshake(buf),
        }
    }

    fn next_1rtt_keys(&mut self) -> Option<KeyPair<Box<dyn PacketKey>>> {
        self.next_1rtt_keys
            .take()
            .or_else(|| self.inner.next_1rtt_keys())
    }

    fn is_valid_retry(&self, orig_dst_cid: &ConnectionId, header: &[u8], payload: &[u8]) -> bool {
        self.inner.is_valid_retry(orig_dst_cid, header, payload)
    }

    fn export_keying_material(
        &self,
        output: &mut [u8],
        label: &[u8],
        context: &[u8],
    ) -> Result<(), ExportKeyingMaterialError> {
        self.inner.export_keying_material(output, label, context)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// CRYPTO frame of `data` at `offset`.
    fn crypto_frame(offset: u64, data: &[u8]) -> Vec<u8> {
        let mut frame = vec![0x06];
        VarInt::from_u64(offset).unwrap().encode(&mut frame);
        VarInt::from_u64(data.len() as u64)
            .unwrap()
            .encode(&mut frame);
        frame.extend_from_slice(data);
        frame
    }

    #[test]
    fn crypto_prefix_joins_frames_in_offset_order() {
        let mut payload = crypto_frame(4, b"efgh");
        payload.push(0x01); // PING
        payload.extend(crypto_frame(0, b"abcd"));
        payload.extend(crypto_frame(2, b"cdef")); // overlaps both
        payload.extend(crypto_frame(20, b"gap")); // beyond a gap: not yet contiguous
        payload.extend([0u8; 10]); // PADDING
        assert_eq!(crypto_prefix(&payload).as_deref(), Some(&b"abcdefgh"[..]));
        // Any other frame, a truncated frame or no CRYPTO data at all: nothing to prepare.
        assert_eq!(crypto_prefix(&[0x02, 0, 0, 0, 0]), None);
        assert_eq!(crypto_prefix(&crypto_frame(0, b"abcd")[..4]), None);
        assert_eq!(crypto_prefix(&[0, 0, 1]), None);
        assert_eq!(crypto_prefix(&crypto_frame(1, b"late")), None);
    }

    /// The (id, value) pairs of encoded transport parameters.
    fn entries(mut encoded: &[u8]) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        while !encoded.is_empty() {
            let id = VarInt::decode(&mut encoded).unwrap().into_inner();
            let len = VarInt::decode(&mut encoded).unwrap().into_inner() as usize;
            out.push((id, take(&mut encoded, len).unwrap().to_vec()));
        }
        out.sort();
        out
    }

    #[test]
    fn server_params_replace_the_per_connection_values() {
        let mut template = Vec::new();
        for (id, value) in [
            (0x04u64, &[0x80, 0, 0, 1][..]),
            (INITIAL_SRC_CID, &[1; 8][..]),
            (STATELESS_RESET_TOKEN, &[2; 16][..]),
            (ORIGINAL_DST_CID, &[3; 8][..]),
            (RETRY_SRC_CID, &[4; 8][..]),
        ] {
            VarInt::from_u64(id).unwrap().encode(&mut template);
            VarInt::from_u64(value.len() as u64)
                .unwrap()
                .encode(&mut template);
            template.extend_from_slice(value);
        }
        let values: [(u64, &[u8]); 3] = [
            (ORIGINAL_DST_CID, &[5; 8]),
            (STATELESS_RESET_TOKEN, &[6; 16]),
            (INITIAL_SRC_CID, &[7; 8]),
        ];
        let without_retry = server_params(&template, &values, None).unwrap();
        assert_eq!(
            entries(&without_retry),
            vec![
                (ORIGINAL_DST_CID, vec![5; 8]),
                (STATELESS_RESET_TOKEN, vec![6; 16]),
                (0x04, vec![0x80, 0, 0, 1]),
                (INITIAL_SRC_CID, vec![7; 8]),
            ]
        );
        let with_retry = server_params(&template, &values, Some(&[8; 8])).unwrap();
        assert!(entries(&with_retry).contains(&(RETRY_SRC_CID, vec![8; 8])));
        // A template cut short does not parse.
        assert_eq!(server_params(&template[..5], &values, None), None);
    }

    #[test]
    fn open_initial_reads_the_client_hello_of_a_real_initial() {
        let identity = crate::tls::Identity::self_signed().unwrap();
        let server =
            crate::tls::server_config(&identity, vec![b"echo".to_vec()], Duration::from_secs(30))
                .unwrap();
        let client = crate::tls::client_config(&crate::tls::ClientTls {
            alpns: vec![b"echo".to_vec()],
            trust: crate::tls::ServerTrust::Insecure,
            tickets: None,
            zero_rtt: false,
            idle_timeout: Duration::from_secs(30),
        })
        .unwrap();
        let mut endpoint = quinn_proto::Endpoint::new(
            Arc::new(quinn_proto::EndpointConfig::default()),
            None,
            true,
            None,
        );
        let now = std::time::Instant::now();
        let (_, mut conn) = endpoint
            .connect(now, client, "127.0.0.1:4433".parse().unwrap(), "localhost")
            .unwrap();
        let mut datagram = Vec::new();
        let transmit = conn.poll_transmit(now, 1, &mut datagram).unwrap();
        datagram.truncate(transmit.size);
        let dst_cid = ConnectionId::new(&datagram[6..6 + usize::from(datagram[5])]);

        let mut copy = datagram.clone();
        let initial = open_initial(server.crypto.as_ref(), &mut copy).expect("an Initial");
        assert_eq!(initial.version, 1);
        assert_eq!(initial.dst_cid, dst_cid);
        // A whole ClientHello: type 1, then its 24-bit length.
        let len = usize::from(initial.crypto[1]) << 16
            | usize::from(initial.crypto[2]) << 8
            | usize::from(initial.crypto[3]);
        assert_eq!((initial.crypto[0], initial.crypto.len()), (1, 4 + len));

        // A flipped bit fails authentication; a short-header packet is not an Initial.
        let mut corrupt = datagram.clone();
        let last = corrupt.len() - 1;
        corrupt[last] ^= 1;
        assert!(open_initial(server.crypto.as_ref(), &mut corrupt).is_none());
        let mut short = datagram;
        short[0] &= 0x7f;
        assert!(open_initial(server.crypto.as_ref(), &mut short).is_none());
    }
}
