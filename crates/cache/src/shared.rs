//! The shared tier of the distributed mode: one cache's entries in Redis, as JSON.
//!
//! Keys are `{prefix}:{service}:{cache}:{epoch}:v:{key}` for a value and `…:g:{key}` for
//! the key's generation. A write or an invalidation bumps the generation; a reader that
//! missed remembers the epoch and generation it saw, and the value it loaded is stored
//! only if neither changed meanwhile (a Lua script does the check and the write at once).
//! Without that guard a slow load could put back a value that a writer had just
//! replaced, and every instance would read it from Redis until it expired. Clearing the
//! whole cache bumps the epoch, which retires every key at once; the old ones expire.
//!
//! Scripts name their keys through `KEYS[1]` plus suffixes, so this tier needs a single
//! Redis server (or a primary), not Redis Cluster.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{Script, Value};

/// How long a key's generation outlives its last write: longer than any load can take.
const GENERATION_TTL_MS: u64 = 3_600_000;
/// The most keys remembered for replay after an outage; beyond, the whole cache is.
const MAX_PENDING_KEYS: usize = 10_000;

const READ: &str = r"
local epoch = redis.call('GET', KEYS[1] .. ':epoch') or '0'
local base = KEYS[1] .. ':' .. epoch
local value = redis.call('GET', base .. ':v:' .. ARGV[1])
local ttl = redis.call('PTTL', base .. ':v:' .. ARGV[1])
local generation = redis.call('GET', base .. ':g:' .. ARGV[1]) or ''
return {epoch, value, ttl, generation}
";

const FILL: &str = r"
local epoch = redis.call('GET', KEYS[1] .. ':epoch') or '0'
if epoch ~= ARGV[2] then return 0 end
local base = KEYS[1] .. ':' .. epoch
local generation = redis.call('GET', base .. ':g:' .. ARGV[1]) or ''
if generation ~= ARGV[3] then return 0 end
if tonumber(ARGV[5]) > 0 then
  redis.call('SET', base .. ':v:' .. ARGV[1], ARGV[4], 'PX', ARGV[5])
else
  redis.call('SET', base .. ':v:' .. ARGV[1], ARGV[4])
end
return 1
";

const WRITE: &str = r"
local epoch = redis.call('GET', KEYS[1] .. ':epoch') or '0'
local base = KEYS[1] .. ':' .. epoch
redis.call('INCR', base .. ':g:' .. ARGV[1])
redis.call('PEXPIRE', base .. ':g:' .. ARGV[1], ARGV[3])
if ARGV[4] == 'del' then
  redis.call('DEL', base .. ':v:' .. ARGV[1])
elseif tonumber(ARGV[5]) > 0 then
  redis.call('SET', base .. ':v:' .. ARGV[1], ARGV[2], 'PX', ARGV[5])
else
  redis.call('SET', base .. ':v:' .. ARGV[1], ARGV[2])
end
return 1
";

/// What a read saw, so that a later fill can tell whether anything changed since.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stamp {
    epoch: String,
    generation: String,
}

/// The answer to a read.
#[derive(Debug)]
pub(crate) struct Found {
    /// The encoded value, if Redis has one.
    pub(crate) value: Option<Vec<u8>>,
    /// Its remaining expiry in Redis.
    pub(crate) expires_in: Option<Duration>,
    /// What the read saw.
    pub(crate) stamp: Stamp,
}

/// A failed Redis command: Redis counts as unreachable until a probe succeeds.
#[derive(Debug, thiserror::Error)]
#[error("the shared cache tier is unreachable: {0}")]
pub(crate) struct Unreachable(String);

/// Writes that could not reach Redis, replayed (as invalidations) before Redis is used again.
#[derive(Debug, Default)]
struct Pending {
    keys: BTreeSet<String>,
    all: bool,
}

/// One cache's view of the shared tier.
pub(crate) struct Shared {
    connection: ConnectionManager,
    base: String,
    timeout: Duration,
    ttl_ms: u64,
    up: AtomicBool,
    pending: Mutex<Pending>,
    read: Script,
    fill: Script,
    write: Script,
}

impl Shared {
    pub(crate) fn new(connection: ConnectionManager, base: String, timeout: Duration, ttl: Option<Duration>) -> Self {
        Shared {
            connection,
            base,
            timeout,
            ttl_ms: ttl.map_or(0, |ttl| ttl.as_millis().clamp(1, u128::from(u64::MAX)) as u64),
            up: AtomicBool::new(false),
            pending: Mutex::new(Pending::default()),
            read: Script::new(READ),
            fill: Script::new(FILL),
            write: Script::new(WRITE),
        }
    }

    /// Whether Redis is usable now.
    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Marks Redis unreachable; true when it was up until now.
    pub(crate) fn mark_down(&self) -> bool {
        self.up.swap(false, Ordering::AcqRel)
    }

    /// Marks Redis usable again (after [`Shared::replay`] succeeded).
    pub(crate) fn mark_up(&self) {
        self.up.store(true, Ordering::Release);
    }

    /// Reads `key`'s value, its expiry and its stamp.
    pub(crate) async fn read(&self, key: &str) -> Result<Found, Unreachable> {
        let mut connection = self.connection.clone();
        let mut invocation = self.read.key(&self.base);
        invocation.arg(key);
        let reply: Vec<Value> = self.bounded(invocation.invoke_async(&mut connection)).await?;
        let text = |value: Option<&Value>| match value {
            Some(Value::BulkString(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
            Some(Value::SimpleString(text)) => text.clone(),
            Some(Value::Int(number)) => number.to_string(),
            _ => String::new(),
        };
        let value = match reply.get(1) {
            Some(Value::BulkString(bytes)) => Some(bytes.clone()),
            _ => None,
        };
        let expires_in = match reply.get(2) {
            Some(Value::Int(ms)) if *ms > 0 => Some(Duration::from_millis(*ms as u64)),
            _ => None,
        };
        Ok(Found {
            value,
            expires_in,
            stamp: Stamp {
                epoch: text(reply.first()),
                generation: text(reply.get(3)),
            },
        })
    }

    /// Stores a loaded value unless the key changed since `stamp` was read; whether it did.
    pub(crate) async fn fill(&self, key: &str, stamp: &Stamp, value: &[u8]) -> Result<bool, Unreachable> {
        let mut connection = self.connection.clone();
        let mut invocation = self.fill.key(&self.base);
        invocation
            .arg(key)
            .arg(&stamp.epoch)
            .arg(&stamp.generation)
            .arg(value)
            .arg(self.ttl_ms);
        let stored: i64 = self.bounded(invocation.invoke_async(&mut connection)).await?;
        Ok(stored == 1)
    }

    /// Writes `value` for `key` (a put).
    pub(crate) async fn write(&self, key: &str, value: &[u8]) -> Result<(), Unreachable> {
        self.change(key, Some(value)).await
    }

    /// Removes `key`.
    pub(crate) async fn remove(&self, key: &str) -> Result<(), Unreachable> {
        self.change(key, None).await
    }

    /// Retires every key of the cache.
    pub(crate) async fn remove_all(&self) -> Result<(), Unreachable> {
        let mut connection = self.connection.clone();
        let mut command = redis::cmd("INCR");
        command.arg(format!("{}:epoch", self.base));
        self.bounded(command.query_async::<i64>(&mut connection))
            .await
            .map(|_| ())
    }

    /// Whether Redis answers.
    pub(crate) async fn ping(&self) -> bool {
        let mut connection = self.connection.clone();
        let command = redis::cmd("PING");
        self.bounded(command.query_async::<String>(&mut connection))
            .await
            .is_ok()
    }

    /// Remembers a write that did not reach Redis, to be replayed as an invalidation.
    pub(crate) fn remember(&self, key: Option<&str>) {
        let mut pending = self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match key {
            Some(key) if !pending.all && pending.keys.len() < MAX_PENDING_KEYS => {
                pending.keys.insert(key.to_owned());
            }
            _ => {
                pending.all = true;
                pending.keys.clear();
            }
        }
    }

    /// Invalidates in Redis whatever writes failed while it was unreachable. Returns the
    /// keys (or `None` for everything) to announce, or the error that stopped it (the
    /// rest stays pending).
    pub(crate) async fn replay(&self) -> Result<Option<Vec<String>>, Unreachable> {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
        if pending.all {
            if let Err(err) = self.remove_all().await {
                self.remember(None);
                return Err(err);
            }
            return Ok(None);
        }
        let keys: Vec<String> = pending.keys.into_iter().collect();
        for (done, key) in keys.iter().enumerate() {
            if let Err(err) = self.remove(key).await {
                for key in &keys[done..] {
                    self.remember(Some(key));
                }
                return Err(err);
            }
        }
        Ok(Some(keys))
    }

    async fn change(&self, key: &str, value: Option<&[u8]>) -> Result<(), Unreachable> {
        let mut connection = self.connection.clone();
        let mut invocation = self.write.key(&self.base);
        invocation
            .arg(key)
            .arg(value.unwrap_or_default())
            .arg(GENERATION_TTL_MS)
            .arg(if value.is_some() { "set" } else { "del" })
            .arg(self.ttl_ms);
        let _: i64 = self.bounded(invocation.invoke_async(&mut connection)).await?;
        Ok(())
    }

    async fn bounded<T>(&self, command: impl Future<Output = redis::RedisResult<T>>) -> Result<T, Unreachable> {
        match tokio::time::timeout(self.timeout, command).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => Err(Unreachable(err.to_string())),
            Err(_) => Err(Unreachable(format!("no answer within {:?}", self.timeout))),
        }
    }
}
