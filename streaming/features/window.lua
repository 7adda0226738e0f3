-- Apply a micro-batch of events to per-entity window state and return every event's features.
-- See docs/features.md (semantics) and streaming/features/layout.py (the plan).
-- ARGV[1] = plan (JSON), ARGV[2] = key prefix, ARGV[3] = dedupe TTL (s); then per event:
--   id, event time (s), entity values (ne), numeric values (nn), distinct values (nh).
-- Returns per event: one value per read, then a status: 0 seen before, 1 applied, 2/3 late (not applied).
-- Each entity's hash is read once per batch (HGETALL), updated in Lua, and written back once.
local plan = cjson.decode(ARGV[1])
local prefix = ARGV[2]
local dedupe_ttl = tonumber(ARGV[3])
local lateness = plan.late
local ne, nn = plan.ne, plan.nn
local stride = 2 + ne + nn + plan.nh
local nev = (#ARGV - 3) / stride
local fmt, floor = string.format, math.floor

local wmkey = prefix .. 'wm'
local wm0 = tonumber(redis.call('GET', wmkey) or '') or 0
local wm = wm0

local states, dirty, dropped, slot_of, touched = {}, {}, {}, {}, {}
local function state(k, slot)
  local st = states[k]
  if st == nil then
    st = {}
    local raw = redis.call('HGETALL', k)
    for j = 1, #raw, 2 do st[raw[j]] = tonumber(raw[j + 1]) end
    states[k], dirty[k], dropped[k], slot_of[k] = st, {}, {}, slot
    touched[#touched + 1] = k
  end
  return st
end
local function put(k, f, v)
  states[k][f] = v
  dirty[k][f] = true
  dropped[k][f] = nil
end
local function drop(k, f)
  if states[k][f] ~= nil then
    states[k][f] = nil
    dirty[k][f] = nil
    dropped[k][f] = true
  end
end

-- forget the buckets of group gi that left every window (at most `keep` + 1 of them)
local function expire_buckets(k, gi, g, newest)
  local st = states[k]
  local lo, hi = st[gi .. '|lo'], st[gi .. '|hi']
  if lo == nil then
    put(k, gi .. '|lo', newest)
    put(k, gi .. '|hi', newest)
    return
  end
  if newest > hi then put(k, gi .. '|hi', newest); hi = newest end
  local cutoff = newest - g.keep
  if lo > cutoff then return end
  local last = math.min(cutoff, hi)
  if last - lo > g.keep + 1 then lo = last - g.keep - 1 end -- older ones were dropped before
  for b = lo, last do
    local p = gi .. '|' .. b .. '|'
    drop(k, p .. 'n')
    for _, f in ipairs(g.s) do drop(k, p .. 's' .. f) end
    for _, f in ipairs(g.q) do drop(k, p .. 'q' .. f) end
    for _, f in ipairs(g.m) do drop(k, p .. 'm' .. f) end
    for _, f in ipairs(g.M) do drop(k, p .. 'M' .. f) end
  end
  put(k, gi .. '|lo', cutoff + 1)
end

local out = {}
for i = 0, nev - 1 do
  local base = 3 + i * stride
  local ts = tonumber(ARGV[base + 2])
  local fresh = redis.call('SET', prefix .. 'seen:{' .. ARGV[base + 1] .. '}', '1', 'NX', 'EX', dedupe_ttl)
  local late = ts < wm - lateness
  local keys, prev_t, prev_v = {}, {}, {}
  for s = 1, ne do
    local k = prefix .. 'e:{' .. plan.ents[s].tag .. '=' .. ARGV[base + 2 + s] .. '}'
    keys[s] = k
    local st = state(k, s)
    if plan.ents[s].last then
      prev_t[s] = st['lt']
      local vals = {}
      for _, f in ipairs(plan.ents[s].lf) do vals[f] = st['l' .. f] end
      prev_v[s] = vals
    end
  end
  if fresh and late then
    -- not applied: forget the id again so that a replay is late too (not "seen")
    redis.call('DEL', prefix .. 'seen:{' .. ARGV[base + 1] .. '}')
  elseif fresh then
    if ts > wm then wm = ts end
    for gi, g in ipairs(plan.groups) do
      local k = keys[g.e]
      local st = states[k]
      local b = floor(ts / g.b)
      local p = gi .. '|' .. b .. '|'
      local n = st[p .. 'n']
      if n == nil then expire_buckets(k, gi, g, b) end
      put(k, p .. 'n', (n or 0) + 1)
      for _, f in ipairs(g.s) do
        put(k, p .. 's' .. f, (st[p .. 's' .. f] or 0) + tonumber(ARGV[base + 2 + ne + f]))
      end
      for _, f in ipairs(g.q) do
        local v = tonumber(ARGV[base + 2 + ne + f])
        put(k, p .. 'q' .. f, (st[p .. 'q' .. f] or 0) + v * v)
      end
      for _, f in ipairs(g.m) do
        local v, old = tonumber(ARGV[base + 2 + ne + f]), st[p .. 'm' .. f]
        if old == nil or v < old then put(k, p .. 'm' .. f, v) end
      end
      for _, f in ipairs(g.M) do
        local v, old = tonumber(ARGV[base + 2 + ne + f]), st[p .. 'M' .. f]
        if old == nil or v > old then put(k, p .. 'M' .. f, v) end
      end
      for _, f in ipairs(g.h) do
        local hk = k .. ':h' .. gi .. ':' .. f .. ':' .. b
        redis.call('PFADD', hk, ARGV[base + 2 + ne + nn + f])
        redis.call('EXPIRE', hk, g.t)
      end
    end
    for s = 1, ne do
      local ent = plan.ents[s]
      if ent.last and (prev_t[s] == nil or ts >= prev_t[s]) then
        put(keys[s], 'lt', ts)
        for _, f in ipairs(ent.lf) do put(keys[s], 'l' .. f, tonumber(ARGV[base + 2 + ne + f])) end
      end
    end
  end
  for _, r in ipairs(plan.reads) do
    local val = 0
    if r.a == 'l' or r.a == 't' then
      local lt = prev_t[r.e]
      if lt ~= nil and lt <= ts and ts - lt <= r.w then
        if r.a == 't' then val = ts - lt else val = prev_v[r.e][r.f] or 0 end
      end
    else
      local g = plan.groups[r.g]
      local k = keys[g.e]
      local top = floor(ts / g.b)
      if r.a == 'd' then
        local hks = {}
        for b = top - r.n + 1, top do hks[#hks + 1] = k .. ':h' .. r.g .. ':' .. r.f .. ':' .. b end
        val = redis.call('PFCOUNT', unpack(hks))
      else
        local st = states[k]
        local c, s, q, mn, mx = 0, 0, 0, nil, nil
        local a, f = r.a, r.f
        for b = top - r.n + 1, top do
          local p = r.g .. '|' .. b .. '|'
          local n = st[p .. 'n']
          if n ~= nil then
            c = c + n
            if a == 's' or a == 'm' or a == 'v' then s = s + (st[p .. 's' .. f] or 0) end
            if a == 'v' then q = q + (st[p .. 'q' .. f] or 0) end
            if a == 'i' then
              local x = st[p .. 'm' .. f]
              if x ~= nil and (mn == nil or x < mn) then mn = x end
            elseif a == 'x' then
              local x = st[p .. 'M' .. f]
              if x ~= nil and (mx == nil or x > mx) then mx = x end
            end
          end
        end
        if a == 'c' then val = c
        elseif a == 's' then val = s
        elseif a == 'm' then if c > 0 then val = s / c end
        elseif a == 'v' then
          if c > 0 then
            local mu = s / c
            local var = q / c - mu * mu
            if var > 0 then val = math.sqrt(var) end
          end
        elseif a == 'i' then val = mn or 0
        elseif a == 'x' then val = mx or 0
        end
      end
    end
    out[#out + 1] = fmt('%.17g', val)
  end
  local status = 0
  if late then status = 2 elseif fresh then status = 1 end
  out[#out + 1] = status
end

for _, k in ipairs(touched) do
  local st, args, dels = states[k], {}, {}
  for f in pairs(dirty[k]) do
    args[#args + 1] = f
    args[#args + 1] = fmt('%.17g', st[f])
  end
  for f in pairs(dropped[k]) do dels[#dels + 1] = f end
  if #args > 0 then redis.call('HSET', k, unpack(args)) end
  if #dels > 0 then redis.call('HDEL', k, unpack(dels)) end
  if #args > 0 then redis.call('EXPIRE', k, plan.ents[slot_of[k]].ttl) end
end
if wm > wm0 then redis.call('SET', wmkey, fmt('%.17g', wm)) end
return out
