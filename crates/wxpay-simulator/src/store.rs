//! The simulator's memory: orders and their refunds, sharded so that concurrent requests
//! rarely wait for each other, and bounded by forgetting the oldest finished orders.
//!
//! An order lives in a slot of a shard. Identifiers handed out for it (`prepay_id`,
//! `transaction_id`, `refund_id`) carry the shard and slot, so finding an order by one of
//! them is a direct access, checked against the identifier the order holds. Only
//! `out_refund_no` needs an index, as merchants query refunds by it.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use wxpay_protocol::v2::RefundStatus;
use wxpay_protocol::{Fen, SignType};

/// How many shards; a power of two, at most 64 (identifiers carry it in two digits). Many
/// small shards also keep each growth of a shard's map short: a rehash holds that shard's
/// lock, and calls on it wait.
pub(crate) const SHARDS: usize = 64;

/// Where an order sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Loc {
    pub shard: usize,
    pub slot: u32,
}

/// An order's state, as `orderquery` reports it (`REFUND` is derived from the refunds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OrderState {
    NotPay,
    Success,
    Closed,
    PayError,
}

impl OrderState {
    /// The position in `ALL`, for per-state counters.
    fn index(self) -> usize {
        self as usize
    }

    pub(crate) const ALL: [OrderState; 4] = [
        OrderState::NotPay,
        OrderState::Success,
        OrderState::Closed,
        OrderState::PayError,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            OrderState::NotPay => "NOTPAY",
            OrderState::Success => "SUCCESS",
            OrderState::Closed => "CLOSED",
            OrderState::PayError => "PAYERROR",
        }
    }
}

/// A refund of an order.
#[derive(Clone, Debug)]
pub(crate) struct RefundRec {
    pub out_refund_no: Box<str>,
    pub refund_id: Box<str>,
    pub refund_fee: Fen,
    pub status: RefundStatus,
    pub notify_url: Option<Arc<str>>,
    pub accepted_at: i64,
    /// When it was accepted, on the simulated timeline in milliseconds (the least time
    /// between two refunds of one order is checked against it).
    pub accepted_ms: i64,
    pub settled_at: Option<i64>,
    /// A digest of the request, to tell a retry (same parameters) from a conflict.
    pub fingerprint: [u8; 16],
    /// Whether the refund notification was acknowledged (or none was asked for).
    pub notified: bool,
    /// Asked for on APIv3: its notification is APIv3's (`REFUND.*`, encrypted JSON).
    pub v3: bool,
}

/// An order.
#[derive(Clone, Debug)]
pub(crate) struct Order {
    pub mch: u16,
    pub appid: Box<str>,
    pub out_trade_no: Box<str>,
    pub body: Box<str>,
    pub attach: Option<Box<str>>,
    pub device_info: Option<Box<str>>,
    pub total_fee: Fen,
    pub notify_url: Arc<str>,
    pub openid: Box<str>,
    pub trade_type: Box<str>,
    /// A digest of the business parameters of the first `unifiedorder`, to tell a
    /// re-entry with the same parameters from one with others.
    pub fingerprint: [u8; 16],
    pub sign_type: SignType,
    pub time_expire: Option<i64>,
    pub created_at: i64,
    pub state: OrderState,
    pub prepay_id: Box<str>,
    pub prepay_at: i64,
    pub transaction_id: Option<Box<str>>,
    pub paid_at: Option<i64>,
    pub pay_error: Option<(Box<str>, Box<str>)>,
    pub refunds: Vec<RefundRec>,
    /// Whether the payment notification was acknowledged.
    pub notified: bool,
    /// Created on APIv3: its notification is APIv3's (`TRANSACTION.SUCCESS`, encrypted JSON).
    pub v3: bool,
}

impl Order {
    /// Refunded so far (every refund but the closed ones counts against the order).
    pub(crate) fn refunded(&self) -> Fen {
        let sum = self
            .refunds
            .iter()
            .filter(|r| r.status != RefundStatus::RefundClose)
            .map(|r| r.refund_fee.get())
            .sum();
        Fen::new(sum).unwrap_or(Fen::MAX)
    }

    /// Nothing more will happen to it: it can be forgotten when memory is needed.
    pub(crate) fn finished(&self) -> bool {
        match self.state {
            OrderState::Closed | OrderState::PayError => true,
            OrderState::NotPay => false,
            OrderState::Success => {
                self.notified
                    && self
                        .refunds
                        .iter()
                        .all(|r| r.notified && r.status != RefundStatus::Processing)
            }
        }
    }
}

/// Slots are kept in chunks of this many, so that growing never moves the orders already
/// held: one big `Vec` would copy megabytes under the shard's lock at each doubling, and every
/// call waiting on that shard would see it in its latency.
const CHUNK: usize = 4096;

/// The orders of a shard, in fixed-size chunks.
#[derive(Default)]
struct Slots {
    chunks: Vec<Vec<Option<Order>>>,
    len: usize,
}

impl Slots {
    fn get(&self, slot: usize) -> Option<&Option<Order>> {
        self.chunks.get(slot / CHUNK)?.get(slot % CHUNK)
    }

    fn get_mut(&mut self, slot: usize) -> Option<&mut Option<Order>> {
        self.chunks.get_mut(slot / CHUNK)?.get_mut(slot % CHUNK)
    }

    /// Adds an empty slot and returns its number.
    fn push(&mut self) -> usize {
        if self.len % CHUNK == 0 {
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        if let Some(last) = self.chunks.last_mut() {
            last.push(None);
        }
        self.len += 1;
        self.len - 1
    }

    fn iter(&self) -> impl Iterator<Item = &Option<Order>> {
        self.chunks.iter().flatten()
    }
}

struct Shard {
    slots: Slots,
    free: Vec<u32>,
    by_no: HashMap<(u16, Box<str>), u32>,
    /// Slots whose order finished, oldest first; eviction candidates.
    finished: VecDeque<u32>,
}

/// `(merchant, out_refund_no)` → the order and the refund's index in it.
type RefundIndex = HashMap<(u16, Box<str>), (Loc, usize)>;

/// The orders.
pub(crate) struct Store {
    shards: Vec<Mutex<Shard>>,
    refunds: Mutex<RefundIndex>,
    hasher: std::collections::hash_map::RandomState,
    count: AtomicUsize,
    max: usize,
    by_state: [AtomicI64; 4],
    evicted: AtomicUsize,
    cursor: AtomicUsize,
}

/// A shard, locked.
pub(crate) struct ShardGuard<'s> {
    guard: MutexGuard<'s, Shard>,
    store: &'s Store,
    shard: usize,
}

impl Store {
    pub(crate) fn new(max: usize) -> Store {
        Store {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        slots: Slots::default(),
                        free: Vec::new(),
                        // Room for the first few hundred thousand orders: every shard fills at the
                        // same pace, so their maps would all rehash within the same tenth of a
                        // second, and calls would queue behind the rehashes (seen as p99.9 spikes
                        // at exactly those moments under load).
                        by_no: HashMap::with_capacity((max / SHARDS).clamp(16, 8192)),
                        finished: VecDeque::new(),
                    })
                })
                .collect(),
            refunds: Mutex::new(HashMap::new()),
            hasher: std::collections::hash_map::RandomState::new(),
            count: AtomicUsize::new(0),
            max: max.max(1),
            by_state: Default::default(),
            evicted: AtomicUsize::new(0),
            cursor: AtomicUsize::new(0),
        }
    }

    /// The shard an order number belongs to.
    pub(crate) fn shard_of(&self, mch: u16, out_trade_no: &str) -> usize {
        let mut h = self.hasher.build_hasher();
        mch.hash(&mut h);
        out_trade_no.hash(&mut h);
        (h.finish() as usize) & (SHARDS - 1)
    }

    /// Locks a shard. A poisoned lock (a panic while holding it) is taken over: the data is
    /// plain values that every operation leaves consistent before it can panic.
    pub(crate) fn lock(&self, shard: usize) -> ShardGuard<'_> {
        let guard = self.shards[shard].lock().unwrap_or_else(|e| e.into_inner());
        ShardGuard {
            guard,
            store: self,
            shard,
        }
    }

    /// The number of orders held.
    pub(crate) fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Orders forgotten to bound memory.
    pub(crate) fn evicted(&self) -> usize {
        self.evicted.load(Ordering::Relaxed)
    }

    /// Orders by state.
    pub(crate) fn state_counts(&self) -> [(OrderState, i64); 4] {
        OrderState::ALL.map(|s| (s, self.by_state[s.index()].load(Ordering::Relaxed)))
    }

    fn count_state(&self, from: Option<OrderState>, to: Option<OrderState>) {
        if let Some(f) = from {
            self.by_state[f.index()].fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(t) = to {
            self.by_state[t.index()].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Forgets old finished orders while the store holds more than its bound: the oldest of
    /// each shard, taking from the shards in turn (so roughly the oldest overall). Called
    /// with no shard locked; it locks one shard at a time.
    pub(crate) fn evict(&self) {
        let mut empty_in_a_row = 0;
        while self.count.load(Ordering::Relaxed) > self.max && empty_in_a_row < SHARDS {
            let shard = self.cursor.fetch_add(1, Ordering::Relaxed) % SHARDS;
            let mut g = self.lock(shard);
            if g.evict_one() {
                empty_in_a_row = 0;
            } else {
                empty_in_a_row += 1;
            }
        }
    }

    /// Where the refund `out_refund_no` of merchant `mch` is.
    pub(crate) fn find_refund(&self, mch: u16, out_refund_no: &str) -> Option<(Loc, usize)> {
        let map = self.refunds.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&(mch, Box::from(out_refund_no))).copied()
    }

    fn index_refund(&self, mch: u16, out_refund_no: &str, loc: Loc, idx: usize) {
        let mut map = self.refunds.lock().unwrap_or_else(|e| e.into_inner());
        map.insert((mch, Box::from(out_refund_no)), (loc, idx));
    }

    fn unindex_refunds(&self, order: &Order) {
        if order.refunds.is_empty() {
            return;
        }
        let mut map = self.refunds.lock().unwrap_or_else(|e| e.into_inner());
        for r in &order.refunds {
            map.remove(&(order.mch, r.out_refund_no.clone()));
        }
    }
}

impl ShardGuard<'_> {
    /// This shard's number.
    pub(crate) fn shard(&self) -> usize {
        self.shard
    }

    /// The slot of an order by its number.
    pub(crate) fn find(&self, mch: u16, out_trade_no: &str) -> Option<u32> {
        // The key type owns its string; a borrowed lookup would need a custom key type,
        // which is not worth it for one small allocation per lookup.
        self.guard.by_no.get(&(mch, Box::from(out_trade_no))).copied()
    }

    /// Calls `f` on every order of this shard.
    pub(crate) fn each(&self, mut f: impl FnMut(&Order)) {
        self.guard.slots.iter().flatten().for_each(&mut f);
    }

    /// The order in a slot.
    pub(crate) fn get(&mut self, slot: u32) -> Option<&mut Order> {
        self.guard.slots.get_mut(slot as usize).and_then(Option::as_mut)
    }

    /// Stores a new order (its number must not be taken) and returns its slot. The order's
    /// `prepay_id` is set by `make_prepay`, which receives the slot.
    pub(crate) fn insert(&mut self, mut order: Order, make_prepay: impl FnOnce(Loc) -> String) -> u32 {
        let slot = match self.guard.free.pop() {
            Some(s) => s,
            None => self.guard.slots.push() as u32,
        };
        order.prepay_id = make_prepay(Loc {
            shard: self.shard,
            slot,
        })
        .into_boxed_str();
        let key = (order.mch, order.out_trade_no.clone());
        self.store.count_state(None, Some(order.state));
        if let Some(s) = self.guard.slots.get_mut(slot as usize) {
            *s = Some(order);
        }
        self.guard.by_no.insert(key, slot);
        self.store.count.fetch_add(1, Ordering::Relaxed);
        slot
    }

    /// Moves an order to another state, keeping the counts right.
    pub(crate) fn set_state(&mut self, slot: u32, to: OrderState) {
        let store = self.store;
        if let Some(o) = self.get(slot) {
            let from = o.state;
            o.state = to;
            store.count_state(Some(from), Some(to));
        }
        self.note_if_finished(slot);
    }

    /// Records that the refund at `idx` exists, for lookups by `out_refund_no`.
    pub(crate) fn index_refund(&self, mch: u16, out_refund_no: &str, slot: u32, idx: usize) {
        self.store.index_refund(
            mch,
            out_refund_no,
            Loc {
                shard: self.shard,
                slot,
            },
            idx,
        );
    }

    /// Forgets this shard's oldest finished order; false when it has none.
    fn evict_one(&mut self) -> bool {
        while let Some(victim) = self.guard.finished.pop_front() {
            // The list may hold a slot twice, or a slot reused since; check it again.
            let still_finished = self
                .guard
                .slots
                .get(victim as usize)
                .and_then(Option::as_ref)
                .is_some_and(Order::finished);
            if !still_finished {
                continue;
            }
            if let Some(order) = self.guard.slots.get_mut(victim as usize).and_then(Option::take) {
                self.guard.by_no.remove(&(order.mch, order.out_trade_no.clone()));
                self.store.unindex_refunds(&order);
                self.store.count_state(Some(order.state), None);
                self.guard.free.push(victim);
                self.store.count.fetch_sub(1, Ordering::Relaxed);
                self.store.evicted.fetch_add(1, Ordering::Relaxed);
                return true;
            }
        }
        false
    }

    /// Puts the order on the eviction list if it just finished.
    pub(crate) fn note_if_finished(&mut self, slot: u32) {
        if self.get(slot).is_some_and(|o| o.finished()) {
            self.guard.finished.push_back(slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(no: &str, state: OrderState) -> Order {
        Order {
            mch: 0,
            appid: "wx1".into(),
            out_trade_no: no.into(),
            body: "b".into(),
            attach: None,
            device_info: None,
            total_fee: Fen::new(1).unwrap(),
            notify_url: Arc::from("http://127.0.0.1:1/n"),
            openid: "o".into(),
            trade_type: "JSAPI".into(),
            fingerprint: [0; 16],
            sign_type: SignType::Md5,
            time_expire: None,
            created_at: 0,
            state,
            prepay_id: "".into(),
            prepay_at: 0,
            transaction_id: None,
            paid_at: None,
            pay_error: None,
            refunds: Vec::new(),
            notified: false,
            v3: false,
        }
    }

    #[test]
    fn finished_orders_are_forgotten_first_and_unfinished_ones_never() {
        let store = Store::new(3);
        let mut g = store.lock(0);
        let a = g.insert(order("a", OrderState::NotPay), |_| "p".into());
        let b = g.insert(order("b", OrderState::NotPay), |_| "p".into());
        g.set_state(b, OrderState::Closed);
        let _c = g.insert(order("c", OrderState::NotPay), |_| "p".into());
        let _d = g.insert(order("d", OrderState::NotPay), |_| "p".into());
        drop(g);
        store.evict();
        let mut g = store.lock(0);
        // Four orders for a bound of three: the finished one went.
        assert_eq!(store.len(), 3);
        assert!(g.find(0, "b").is_none());
        assert!(g.find(0, "a").is_some());
        assert_eq!(store.evicted(), 1);
        // Nothing else is finished: the bound is exceeded rather than losing live orders.
        let _e = g.insert(order("e", OrderState::NotPay), |_| "p".into());
        drop(g);
        store.evict();
        let mut g = store.lock(0);
        assert_eq!(store.len(), 4);
        assert!(g.get(a).is_some());
        drop(g);
        let counts = store.state_counts();
        assert_eq!(counts[0], (OrderState::NotPay, 4));
        assert_eq!(counts[2], (OrderState::Closed, 0));
    }
}
