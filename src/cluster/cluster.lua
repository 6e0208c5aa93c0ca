-- cluster.lua: the fleet's admission scheduler, run inside Redis.
--
-- One script, loaded once per connection (SCRIPT LOAD) and called with
-- EVALSHA, so every decision (admit, release, cancel, reap) is atomic: no
-- replica ever sees half of another's change. ARGV[1] is the operation,
-- ARGV[2] the namespace (prefix of every key), ARGV[3] the caller's
-- replica id, ARGV[4] its epoch; the rest depends on the operation. Keys
-- are built here from the namespace, so the script needs one Redis (not a
-- Redis Cluster); docs/cluster.md says so.
--
-- The scheduler is start-time fair queueing, hierarchical, per pool: each
-- group and each tenant has a virtual time (service / weight); the
-- backlogged group with the smallest one is served, and inside it the
-- backlogged tenant with the smallest one, FIFO inside a tenant (by a
-- fleet-wide sequence, so a tenant's requests through several replicas
-- keep their arrival order). A tenant or group that becomes backlogged
-- starts at least at the virtual time of the last one served, so idling
-- banks no credit. Sorted sets make every choice O(log n): a queued request
-- costs O(log n), never a scan of every tenant. The long-run shares are
-- those of the single process's deficit round robin (src/fairshare);
-- tests/integration/test_cluster_lua.mjs drives this script in a real
-- redis-server, decision by decision.
--
-- Names are joined with "\0" (a C string never holds one), so a tenant or
-- pool name can be anything.
--
-- Every count a replica holds is also recorded under its id (gm:<id> the
-- members it holds slots for, qm:<id> the members it has queued), so when
-- its lease runs out, or it joins again after losing Redis, exactly what it
-- held is taken back: counters return to zero when traffic ends, whatever
-- happened in between.

local op, ns, rid, epoch = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local P = ns .. ':'
local Z = '\0'

local N = P .. 'n'          -- counters: a, q, p<pool>, pq<pool>, t<tenant>, tq<tenant>, s<tenant>
local CFG = P .. 'cfg'      -- caps and weights (from the replicas' configs and the admin API)
local V = P .. 'v'          -- virtual times
local E = P .. 'e'          -- member -> pool \0 tenant \0 cost \0 replica \0 reserved \0 budget keys
local REPS = P .. 'reps'    -- replica id -> last heard (ms)
local QP = P .. 'qp'        -- pools with an eligible backlog

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function num(v) return tonumber(v) or 0 end
local function hget(k, f) return num(redis.call('HGET', k, f)) end
local function fmt(x) return string.format('%.17g', x) end

local function split(s)
  local out, i = {}, 1
  while true do
    local j = string.find(s, Z, i, true)
    if not j then out[#out + 1] = string.sub(s, i); return out end
    out[#out + 1] = string.sub(s, i, j - 1)
    i = j + 1
  end
end

-- A member's record: pool, tenant, cost, replica, reserved, and the two
-- budget keys ('' or "kind \0 name \0 period": they hold NULs of their own,
-- so they come last, after their lengths).
local function encode(d)
  return table.concat({d[1], d[2], d[3], d[4], d[5], #d[6], #d[7]}, Z) .. Z .. d[6] .. d[7]
end
local function record(s)
  local out, i = {}, 1
  for k = 1, 7 do
    local j = string.find(s, Z, i, true)
    if not j then return {'', '', '0', '', '0', '', ''} end -- cannot happen: every record is encode()'s
    out[k] = string.sub(s, i, j - 1)
    i = j + 1
  end
  local l1, l2 = tonumber(out[6]) or 0, tonumber(out[7]) or 0
  out[6] = string.sub(s, i, i + l1 - 1)
  out[7] = string.sub(s, i + l1, i + l1 + l2 - 1)
  return out
end

local function fifo() return redis.call('HGET', CFG, 'mode') == 'fifo' end
-- In weighted mode every tenant is in one group; in fifo mode one pseudo
-- tenant per pool holds every request in arrival order.
local function group_of(tenant)
  local m = redis.call('HGET', CFG, 'mode')
  if m == 'weighted' or m == 'fifo' then return '' end
  return redis.call('HGET', CFG, 'tg' .. Z .. tenant) or 'default'
end
local function qtenant(tenant) if fifo() then return '' end return tenant end
local function tweight(tenant) local w = hget(CFG, 'tw' .. Z .. tenant) if w < 1 then w = 1 end return w end
local function gweight(g) if g == '' then return 1 end local w = hget(CFG, 'gw' .. Z .. g) if w < 1 then w = 1 end return w end
local function tcap(tenant) return hget(CFG, 'tc' .. Z .. tenant) end

local function qkey(pool, qt) return P .. 'q' .. Z .. pool .. Z .. qt end
local function gkey(pool) return P .. 'qg' .. Z .. pool end
local function tkey(pool, g) return P .. 'qt' .. Z .. pool .. Z .. g end
local function tpkey(tenant) return P .. 'tp' .. Z .. tenant end

-- Whether the queue tenant qt of pool may be served now: it has requests
-- and (for a real tenant) is under its max_inflight. FIFO's pseudo tenant
-- is served while its head's tenant is under its cap.
local function eligible(pool, qt)
  local head = redis.call('ZRANGE', qkey(pool, qt), 0, 0)[1]
  if not head then return false end
  local tenant = qt
  if qt == '' then tenant = record(redis.call('HGET', E, head))[2] end
  local cap = tcap(tenant)
  return cap == 0 or hget(N, 't' .. Z .. tenant) < cap
end

-- Put qt of pool in (or take it out of) the sorted sets of what may be
-- served, after anything that can change its eligibility.
local function refresh(pool, qt)
  local g = group_of(qt)
  local tk = tkey(pool, g)
  local el = eligible(pool, qt)
  local present = redis.call('ZSCORE', tk, qt)
  if el and not present then
    local vt = math.max(hget(V, 't' .. Z .. pool .. Z .. qt), hget(V, 'lt' .. Z .. pool .. Z .. g))
    redis.call('HSET', V, 't' .. Z .. pool .. Z .. qt, fmt(vt))
    redis.call('ZADD', tk, fmt(vt), qt)
    if redis.call('ZCARD', tk) == 1 then
      local vg = math.max(hget(V, 'g' .. Z .. pool .. Z .. g), hget(V, 'lg' .. Z .. pool))
      redis.call('HSET', V, 'g' .. Z .. pool .. Z .. g, fmt(vg))
      redis.call('ZADD', gkey(pool), fmt(vg), g)
      redis.call('ZADD', QP, 0, pool)
    end
  elseif present and not el then
    redis.call('ZREM', tk, qt)
    if redis.call('ZCARD', tk) == 0 then
      redis.call('ZREM', gkey(pool), g)
      if redis.call('ZCARD', gkey(pool)) == 0 then redis.call('ZREM', QP, pool) end
    end
  end
end

-- A tenant's in-flight count changed: it may have crossed its cap in every
-- pool it waits in.
local function refresh_tenant(tenant)
  local qt = qtenant(tenant)
  for _, pool in ipairs(redis.call('SMEMBERS', tpkey(qt))) do refresh(pool, qt) end
end

-- Charge (or credit, when negative) cost to the virtual times of tenant
-- and its group in pool.
local function charge(pool, tenant, cost)
  local qt = qtenant(tenant)
  local g = group_of(qt)
  local fk = 't' .. Z .. pool .. Z .. qt
  local vt = hget(V, fk) + cost / tweight(qt == '' and tenant or qt)
  redis.call('HSET', V, fk, fmt(vt))
  redis.call('ZADD', tkey(pool, g), 'XX', fmt(vt), qt)
  local gk = 'g' .. Z .. pool .. Z .. g
  local vg = hget(V, gk) + cost / gweight(g)
  redis.call('HSET', V, gk, fmt(vg))
  redis.call('ZADD', gkey(pool), 'XX', fmt(vg), g)
end

local function pool_free(pool)
  local cap = hget(CFG, 'p' .. Z .. pool)
  if cap > 0 and hget(N, 'p' .. Z .. pool) >= cap then return false end
  local all = hget(CFG, 'cap')
  return all == 0 or hget(N, 'a') < all
end

-- HINCRBY that deletes a field reaching zero, so a fleet at rest leaves
-- nothing behind (what the zero-counters check reads).
local function incr(k, f, delta)
  if redis.call('HINCRBY', k, f, delta) == 0 then redis.call('HDEL', k, f) end
end

local function hold(d, member, delta)
  incr(N, 'a', delta)
  incr(N, 'p' .. Z .. d[1], delta)
  incr(N, 't' .. Z .. d[2], delta)
  incr(P .. 'h:' .. d[4], d[1], delta)
  if delta > 0 then redis.call('SADD', P .. 'gm:' .. d[4], member)
  else redis.call('SREM', P .. 'gm:' .. d[4], member) end
end

local function unqueue_count(d, member)
  incr(N, 'q', -1)
  incr(N, 'pq' .. Z .. d[1], -1)
  incr(N, 'tq' .. Z .. d[2], -1)
  redis.call('SREM', P .. 'qm:' .. d[4], member)
end

-- Take member out of its tenant's queue (it must be there).
local function dequeue(d, member)
  local qt = qtenant(d[2])
  local qk = qkey(d[1], qt)
  redis.call('ZREM', qk, member)
  redis.call('ZREM', P .. 'pk:' .. d[4], member)
  if redis.call('ZCARD', qk) == 0 then redis.call('SREM', tpkey(qt), d[1]) end
  unqueue_count(d, member)
end

-- Budget reservation of a member: drop it, and charge `used` tokens.
local function settle(d, used)
  local res = num(d[5])
  for i = 6, #d do
    if d[i] ~= '' then
      local bk = P .. 'b' .. Z .. d[i]
      if res ~= 0 then incr(bk, 'r', -res) end
      if used ~= 0 then redis.call('HINCRBY', bk, 'u', used) end
    end
  end
end

-- Grant every slot pool can give now, in fair order; the owners hear of it
-- on their channel. Returns the grants that went to the caller.
-- A replica that cannot hear its grants (its subscription is gone: killed,
-- or reconnecting) or that missed two heartbeats is probably dead: its
-- lease has not run out yet, but a slot granted to one of its queued
-- requests would sit unused until it does. Such requests are parked (out
-- of their tenant's queue, still counted as queued) instead of granted,
-- and go back to their places (same arrival sequence) as soon as it is
-- heard from. Its held slots stay its own until its lease runs out.
local function suspect(owner)
  if owner == rid then return false end
  if redis.call('PUBSUB', 'NUMSUB', P .. 'w:' .. owner)[2] == 0 then return true end
  local s = redis.call('ZSCORE', REPS, owner)
  local lease = hget(CFG, 'lease')
  if lease <= 0 then lease = 3000 end
  return not s or tonumber(s) < now - lease * 2 / 3
end

local function park(pool, qt, member, owner)
  local qk = qkey(pool, qt)
  local seq = redis.call('ZSCORE', qk, member)
  redis.call('ZREM', qk, member)
  if redis.call('ZCARD', qk) == 0 then redis.call('SREM', tpkey(qt), pool) end
  redis.call('ZADD', P .. 'pk:' .. owner, seq, member)
  refresh(pool, qt)
end

local function pump(pool, mine)
  while pool_free(pool) do
    local gz = redis.call('ZRANGE', gkey(pool), 0, 0, 'WITHSCORES')
    if #gz == 0 then break end
    local g, gv = gz[1], tonumber(gz[2])
    local tz = redis.call('ZRANGE', tkey(pool, g), 0, 0, 'WITHSCORES')
    if #tz == 0 then redis.call('ZREM', gkey(pool), g) break end -- cannot happen: refresh keeps them in step
    local qt, tv = tz[1], tonumber(tz[2])
    local member = redis.call('ZRANGE', qkey(pool, qt), 0, 0)[1]
    local d = record(redis.call('HGET', E, member))
    if suspect(d[4]) then
      park(pool, qt, member, d[4])
    else
      dequeue(d, member)
      hold(d, member, 1)
      redis.call('HSET', V, 'lt' .. Z .. pool .. Z .. g, fmt(tv))
      redis.call('HSET', V, 'lg' .. Z .. pool, fmt(gv))
      charge(pool, d[2], num(d[3]))
      refresh_tenant(d[2])
      refresh(pool, qt)
      local reqid = string.sub(member, #d[4] + 2)
      if d[4] == rid then mine[#mine + 1] = reqid
      else redis.call('PUBLISH', P .. 'w:' .. d[4], reqid) end
    end
  end
end

-- After slots were freed in pool: that pool first, then every other pool
-- with an eligible backlog (a global cap frees a slot for every pool, and
-- a tenant back under its max_inflight may be servable in any of them).
-- QP holds only pools with a request that may run: a few at most.
local function pump_all(pool, mine)
  if pool then pump(pool, mine) end
  for _, p in ipairs(redis.call('ZRANGE', QP, 0, -1)) do
    if p ~= pool then pump(p, mine) end
  end
end

-- Give back a held member: counts, budget, and the cost correction.
local function unhold(member, d, actual_cost, used_tokens)
  hold(d, member, -1)
  settle(d, used_tokens)
  if actual_cost ~= num(d[3]) then charge(d[1], d[2], actual_cost - num(d[3])) end
  redis.call('HDEL', E, member)
  refresh_tenant(d[2])
end

-- Everything replica r holds or has queued goes back. used_reserved: charge
-- a held member's reservation to its budgets (the replica died with it
-- running, so its tokens were probably spent).
local function reap(r, charge_reserved)
  local pools = {}
  local sk = P .. 's:' .. r
  for _, f in ipairs(redis.call('HKEYS', sk)) do incr(N, 's' .. Z .. f, -hget(sk, f)) end
  for _, m in ipairs(redis.call('SMEMBERS', P .. 'qm:' .. r)) do
    local s = redis.call('HGET', E, m)
    if s then
      local d = record(s)
      dequeue(d, m)
      settle(d, 0)
      redis.call('HDEL', E, m)
      refresh(d[1], qtenant(d[2]))
      pools[d[1]] = true
    end
  end
  for _, m in ipairs(redis.call('SMEMBERS', P .. 'gm:' .. r)) do
    local s = redis.call('HGET', E, m)
    if s then
      local d = record(s)
      hold(d, m, -1)
      settle(d, charge_reserved and num(d[5]) or 0)
      redis.call('HDEL', E, m)
      refresh_tenant(d[2])
      pools[d[1]] = true
    end
  end
  redis.call('DEL', P .. 'qm:' .. r, P .. 'gm:' .. r, P .. 'h:' .. r, P .. 's:' .. r, P .. 'rep:' .. r, P .. 'pk:' .. r)
  redis.call('ZREM', REPS, r)
  return pools
end

local function reap_dead(mine)
  local lease = hget(CFG, 'lease')
  if lease <= 0 then lease = 3000 end
  local dead = redis.call('ZRANGEBYSCORE', REPS, '-inf', now - lease)
  for _, r in ipairs(dead) do reap(r, true) end
  if #dead > 0 then pump_all(nil, mine) end
  return #dead
end

-- A replica's own view of the fleet's caps and weights: written at join and
-- on reload; later writers win, and a disagreement is reported (digests).
local function set_config(list, from)
  local i = from
  while i + 1 <= #list do
    local f, v = list[i], list[i + 1]
    if v == '' then redis.call('HDEL', CFG, f) else redis.call('HSET', CFG, f, v) end
    i = i + 2
  end
end

local function registered()
  return redis.call('HGET', P .. 'rep:' .. rid, 'epoch') == epoch
end

-- The caller is alive: its parked requests go back to their places.
local function touch()
  redis.call('ZADD', REPS, now, rid)
  local pk = P .. 'pk:' .. rid
  if redis.call('EXISTS', pk) == 0 then return end
  local z = redis.call('ZRANGE', pk, 0, -1, 'WITHSCORES')
  redis.call('DEL', pk)
  local pools = {}
  for i = 1, #z, 2 do
    local d = record(redis.call('HGET', E, z[i]))
    local qt = qtenant(d[2])
    redis.call('ZADD', qkey(d[1], qt), z[i + 1], z[i])
    redis.call('SADD', tpkey(qt), d[1])
    refresh(d[1], qt)
    pools[d[1]] = true
  end
  local mine = {}
  for pool in pairs(pools) do pump(pool, mine) end
  for _, q in ipairs(mine) do redis.call('PUBLISH', P .. 'w:' .. rid, q) end
end

-- Token bucket (rpm, tpm): per_minute tokens a minute, at most per_minute.
local function bucket(tenant, which, per_minute)
  local k = P .. 'rl' .. Z .. tenant
  local lv = redis.call('HGET', k, which)
  local at = hget(k, which .. '@')
  local level
  if not lv then level = per_minute else
    level = math.min(per_minute, tonumber(lv) + (now - at) * per_minute / 60000)
  end
  return level
end
local function bucket_put(k, which, level)
  redis.call('HSET', k, which, fmt(level), which .. '@', now)
  redis.call('PEXPIRE', k, 120000)
end
local function wait_ms(level, n, per_minute)
  if level >= n then return 0 end
  return math.ceil((n - level) * 60000 / per_minute)
end

---------------------------------------------------------------- operations

if op == 'join' then
  -- ARGV: 5 nonce, 6 lease_ms, 7 config digest, 8 n config pairs, then the
  -- pairs, then n open streams and (tenant, count) pairs, then held members
  -- as groups of 7: reqid, pool, tenant, cost, reserved, tenant budget key,
  -- key budget key. Whatever this id held before is replaced by that.
  local nonce, lease, digest = ARGV[5], tonumber(ARGV[6]), ARGV[7]
  local last = redis.call('ZSCORE', REPS, rid)
  if last and tonumber(last) >= now - lease and redis.call('HGET', P .. 'rep:' .. rid, 'nonce') ~= nonce then
    return {-2, now - tonumber(last)}
  end
  redis.call('HSET', CFG, 'lease', lease)
  reap(rid, false)
  local ne = redis.call('INCR', P .. 'epoch')
  redis.call('HSET', P .. 'rep:' .. rid, 'epoch', ne, 'nonce', nonce, 'digest', digest, 'since', now)
  touch()
  local npairs = tonumber(ARGV[8])
  local cfg = {}
  for i = 9, 8 + 2 * npairs do cfg[#cfg + 1] = ARGV[i] end
  set_config(cfg, 1)
  local i = 9 + 2 * npairs
  local nstreams = tonumber(ARGV[i])
  for j = i + 1, i + 2 * nstreams, 2 do
    incr(N, 's' .. Z .. ARGV[j], tonumber(ARGV[j + 1]))
    incr(P .. 's:' .. rid, ARGV[j], tonumber(ARGV[j + 1]))
  end
  i = i + 1 + 2 * nstreams
  while i + 6 <= #ARGV do
    local member = rid .. Z .. ARGV[i]
    local d = {ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], rid, ARGV[i + 4], ARGV[i + 5], ARGV[i + 6]}
    redis.call('HSET', E, member, encode(d))
    hold(d, member, 1)
    if num(d[5]) ~= 0 then
      for j = 6, 7 do if d[j] ~= '' then incr(P .. 'b' .. Z .. d[j], 'r', num(d[5])) end end
    end
    i = i + 7
  end
  local mine = {}
  reap_dead(mine)
  pump_all(nil, mine)
  for _, q in ipairs(mine) do redis.call('PUBLISH', P .. 'w:' .. rid, q) end
  return {ne, redis.call('ZCARD', REPS)}
end

if not registered() then return {-1} end
touch()

if op == 'admit' then
  -- ARGV: 5 reqid, 6 pool, 7 tenant, 8 cost, 9 rpm, 10 tpm, 11 tpm take,
  -- 12 reserve, 13 tenant budget key, 14 its limit, 15 key budget key, 16 its limit
  local reqid, pool, tenant, cost = ARGV[5], ARGV[6], ARGV[7], tonumber(ARGV[8])
  local rpm, tpm, take = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
  local reserve = tonumber(ARGV[12])
  local rrem, trem = -1, -1
  local rl, tl
  if rpm > 0 then
    rl = bucket(tenant, 'r', rpm)
    if rl < 1 then return {2, wait_ms(rl, 1, rpm), 0, -1} end
  end
  if tpm > 0 and take > 0 then
    tl = bucket(tenant, 't', tpm)
    if tl < take then return {3, wait_ms(tl, take, tpm), -1, 0} end
  end
  -- budgets: the estimate must fit in what is neither used nor reserved
  for b = 0, 1 do
    local bk, lim = ARGV[13 + 2 * b], tonumber(ARGV[14 + 2 * b])
    if bk ~= '' and lim > 0 then
      local h = P .. 'b' .. Z .. bk
      local used = hget(h, 'u')
      local held = used + hget(h, 'r')
      if held >= lim or held + reserve > lim then return {6 + b, used, lim, held - used} end
    end
  end
  -- caps and queue
  local qt = qtenant(tenant)
  local backlog = redis.call('ZCARD', gkey(pool)) > 0
  local cap = tcap(tenant)
  local under = cap == 0 or hget(N, 't' .. Z .. tenant) < cap
  local member = rid .. Z .. reqid
  local code
  if not backlog and under and pool_free(pool) then
    code = 0
  else
    local tqc = hget(CFG, 'tqc' .. Z .. tenant)
    if tqc > 0 and hget(N, 'tq' .. Z .. tenant) >= tqc then return {4, 0, 0, 0} end
    local qc = hget(CFG, 'qcap')
    if qc > 0 and hget(N, 'q') >= qc then return {5, 0, 0, 0} end
    code = 1
  end
  if rpm > 0 then rl = rl - 1; bucket_put(P .. 'rl' .. Z .. tenant, 'r', rl); rrem = math.floor(rl) end
  if tpm > 0 and take > 0 then tl = tl - take; bucket_put(P .. 'rl' .. Z .. tenant, 't', tl); trem = math.floor(math.max(tl, 0)) end
  local d = {pool, tenant, cost, rid, reserve, ARGV[13], ARGV[15]}
  redis.call('HSET', E, member, encode(d))
  settle({pool, tenant, cost, rid, -reserve, ARGV[13], ARGV[15]}, 0)
  if code == 0 then
    hold(d, member, 1)
    charge(pool, tenant, cost)
    refresh_tenant(tenant)
  else
    redis.call('ZADD', qkey(pool, qt), redis.call('INCR', P .. 'seq'), member)
    redis.call('SADD', tpkey(qt), pool)
    redis.call('SADD', P .. 'qm:' .. rid, member)
    incr(N, 'q', 1)
    incr(N, 'pq' .. Z .. pool, 1)
    incr(N, 'tq' .. Z .. tenant, 1)
    refresh(pool, qt)
    -- it may be servable at once (a slot is free but others were queued)
    local mine = {}
    pump(pool, mine)
    for _, q in ipairs(mine) do
      if q == reqid then code = 0 else redis.call('PUBLISH', P .. 'w:' .. rid, q) end
    end
  end
  return {code, 0, rrem, trem}
end

if op == 'release' then
  -- ARGV: 5 reqid, 6 actual cost, 7 tokens used (budgets), 8 tpm taken - actual (refund, may be < 0)
  local member = rid .. Z .. ARGV[5]
  local s = redis.call('HGET', E, member)
  if not s or redis.call('SISMEMBER', P .. 'gm:' .. rid, member) == 0 then return {0} end
  local d = record(s)
  unhold(member, d, tonumber(ARGV[6]), tonumber(ARGV[7]))
  local refund = tonumber(ARGV[8])
  if refund ~= 0 then
    local k = P .. 'rl' .. Z .. d[2]
    if redis.call('HEXISTS', k, 't') == 1 then
      redis.call('HSET', k, 't', fmt(tonumber(redis.call('HGET', k, 't')) + refund))
    end
  end
  local mine = {}
  pump_all(d[1], mine)
  for _, q in ipairs(mine) do redis.call('PUBLISH', P .. 'w:' .. rid, q) end
  return {1}
end

if op == 'cancel' then
  -- ARGV: 5 reqid. 1: it was queued and is gone; 2: it had been granted,
  -- and its slot is given back; 0: unknown.
  local member = rid .. Z .. ARGV[5]
  local s = redis.call('HGET', E, member)
  if not s then return {0} end
  local d = record(s)
  local mine = {}
  if redis.call('SISMEMBER', P .. 'qm:' .. rid, member) == 1 then
    dequeue(d, member)
    settle(d, 0)
    redis.call('HDEL', E, member)
    refresh(d[1], qtenant(d[2]))
    pump_all(d[1], mine)
    for _, q in ipairs(mine) do redis.call('PUBLISH', P .. 'w:' .. rid, q) end
    return {1}
  end
  unhold(member, d, 0, 0)
  pump_all(d[1], mine)
  for _, q in ipairs(mine) do redis.call('PUBLISH', P .. 'w:' .. rid, q) end
  return {2}
end

if op == 'beat' then
  -- ARGV: 5 config digest. Reaps the dead, and answers the live count and
  -- how many distinct configs they run.
  local mine = {}
  reap_dead(mine)
  for _, q in ipairs(mine) do redis.call('PUBLISH', P .. 'w:' .. rid, q) end
  local digests, nd = {}, 0
  for _, r in ipairs(redis.call('ZRANGE', REPS, 0, -1)) do
    local dg = redis.call('HGET', P .. 'rep:' .. r, 'digest') or ''
    if not digests[dg] then digests[dg] = true; nd = nd + 1 end
  end
  return {redis.call('ZCARD', REPS), nd}
end

if op == 'config' then
  -- ARGV: 5 digest, then field/value pairs (value '' deletes). A reload or
  -- an admin change; queued tenants are re-sorted under the new values.
  redis.call('HSET', P .. 'rep:' .. rid, 'digest', ARGV[5])
  local moved = {}
  local pairs_ = {}
  for i = 6, #ARGV do pairs_[#pairs_ + 1] = ARGV[i] end
  -- a tenant changing group leaves its old group's sets first
  local i = 1
  while i + 1 <= #pairs_ do
    local f = pairs_[i]
    if string.sub(f, 1, 3) == 'tg' .. Z or string.sub(f, 1, 3) == 'tc' .. Z then
      local tenant = string.sub(f, 4)
      local qt = qtenant(tenant)
      for _, pool in ipairs(redis.call('SMEMBERS', tpkey(qt))) do
        local g = group_of(qt)
        if redis.call('ZREM', tkey(pool, g), qt) == 1 and redis.call('ZCARD', tkey(pool, g)) == 0 then
          redis.call('ZREM', gkey(pool), g)
          if redis.call('ZCARD', gkey(pool)) == 0 then redis.call('ZREM', QP, pool) end
        end
      end
      moved[#moved + 1] = qt
    end
    i = i + 2
  end
  set_config(pairs_, 1)
  for _, qt in ipairs(moved) do
    for _, pool in ipairs(redis.call('SMEMBERS', tpkey(qt))) do refresh(pool, qt) end
  end
  local mine = {}
  pump_all(nil, mine)
  for _, q in ipairs(mine) do redis.call('PUBLISH', P .. 'w:' .. rid, q) end
  return {1}
end

if op == 'capacity' then
  -- ARGV: 5 pool, 6 lease ms, 7 the pool's slots, 8.. each endpoint's
  -- limit. A pool with max_inflight "auto" has one controller for the whole
  -- fleet: every replica scrapes the same backends and runs its own (so a
  -- successor is warm), but only the replica holding this lease, renewed
  -- every interval, sets the pool's slots and the endpoints' limits; the
  -- others adopt what it set. Answer: {1 if the caller owns it, the pool's
  -- requests in flight fleet-wide, the limits in force...}; a follower gets
  -- {0, in flight} alone until the owner has set any. In flight counts the
  -- live replicas only: a killed one's slots stay held until its lease runs
  -- out, but its requests are gone from the backend, and counting them
  -- would tell the controller its limit binds when it does not. O(replicas).
  local pool, lease = ARGV[5], tonumber(ARGV[6])
  local k = P .. 'cap' .. Z .. pool
  local inflight = 0
  for _, r in ipairs(redis.call('ZRANGE', REPS, 0, -1)) do
    if not suspect(r) then inflight = inflight + hget(P .. 'h:' .. r, pool) end
  end
  local owner = redis.call('HGET', k, 'o')
  if owner and owner ~= rid then
    local out = {0, inflight}
    for v in string.gmatch(redis.call('HGET', k, 'l') or '', '%d+') do out[#out + 1] = tonumber(v) end
    return out
  end
  local l, out = {}, {1, inflight}
  for i = 8, #ARGV do
    l[#l + 1] = ARGV[i]
    out[#out + 1] = tonumber(ARGV[i])
  end
  redis.call('HSET', k, 'o', rid, 'l', table.concat(l, ','))
  redis.call('PEXPIRE', k, lease)
  if redis.call('HGET', CFG, 'p' .. Z .. pool) ~= ARGV[7] then
    redis.call('HSET', CFG, 'p' .. Z .. pool, ARGV[7])
    local mine = {}
    pump_all(pool, mine)
    for _, q in ipairs(mine) do redis.call('PUBLISH', P .. 'w:' .. rid, q) end
  end
  return out
end

if op == 'stream' then
  -- ARGV: 5 tenant, 6 +1 / -1, 7 max_streams (0 = no cap). Open MCP event
  -- streams, fleet-wide. 1: counted; 0: at the cap.
  local tenant, delta, cap = ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7])
  if delta > 0 and cap > 0 and hget(N, 's' .. Z .. tenant) >= cap then return {0} end
  if delta < 0 and hget(P .. 's:' .. rid, tenant) <= 0 then return {1} end
  incr(N, 's' .. Z .. tenant, delta)
  incr(P .. 's:' .. rid, tenant, delta)
  return {1}
end

if op == 'info' then
  -- The fleet as /admin/cluster and /admin/fairshare show it.
  local reps = {}
  local zr = redis.call('ZRANGE', REPS, 0, -1, 'WITHSCORES')
  for i = 1, #zr, 2 do
    local r = zr[i]
    reps[#reps + 1] = {r, now - tonumber(zr[i + 1]), redis.call('HGET', P .. 'rep:' .. r, 'digest') or '',
                       redis.call('HGETALL', P .. 'h:' .. r)}
  end
  return {reps, redis.call('HGETALL', N)}
end

if op == 'budget' then
  -- ARGV: 5.. budget keys. used and reserved of each.
  local out = {}
  for i = 5, #ARGV do
    local h = P .. 'b' .. Z .. ARGV[i]
    out[#out + 1] = {hget(h, 'u'), hget(h, 'r')}
  end
  return out
end

if op == 'leave' then
  reap(rid, false)
  local mine = {}
  pump_all(nil, mine)
  return {1}
end

return redis.error_reply('obleth: unknown operation ' .. tostring(op))
