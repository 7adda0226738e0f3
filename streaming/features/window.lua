-- Apply a micro-batch of events to per-entity window state and return every event's features.
-- See docs/features.md (semantics) and streaming/features/layout.py (the plan).
-- ARGV[1] = plan (JSON), ARGV[2] = key prefix, ARGV[3] = dedupe TTL (s); then per event:
--   id, event time (s), entity values (ne), numeric values (nn), distinct values (nh).
-- Returns per event: one value per read, then a status: 0 seen before, 1 applied, 2 late (not applied).
-- Each entity's hash is read once per batch (HGETALL), updated in Lua, and written back once.
local plan = cjson.decode(ARGV[1])
local prefix = ARGV[2]
local dedupe_ttl = tonumber(ARGV[3])
local lateness = plan.late
local ne, nn = plan.ne, plan.nn
local stride = 2 + ne + nn + plan.nh
local nev = (#ARGV - 3) / stride
local fmt, floor, tonumber = string.format, math.floor, tonumber
-- a bucket is one array: [1] count, [S+f] sum, [Q+f] sum of squares, [MI+f] min, [MA+f] max of field f
local S, Q, MI, MA = 1, 1 + nn, 1 + 2 * nn, 1 + 3 * nn
local OFFSET = {s = S, q = Q, m = MI, M = MA}
for gi, g in ipairs(plan.groups) do
  g.lok, g.hik = gi .. '|lo', gi .. '|hi'
end

local wmkey = prefix .. 'wm'
local wm0 = tonumber(redis.call('GET', wmkey) or '') or 0
local wm = wm0

-- per entity key: st.g[group][bucket] = bucket array, st.lo/hi[group] (live bucket range),
-- st.lt (latest event time), st.l[field] (its values); what changed, to write back once
local states, changed, dropped, slot_of, touched = {}, {}, {}, {}, {}
local function parse(raw)
  local st = {g = {}, lo = {}, hi = {}, l = {}}
  for j = 1, #raw, 2 do
    local f, v = raw[j], tonumber(raw[j + 1])
    local gi, b, stat, fs = string.match(f, '^(%d+)|(%-?%d+)|(%a)(%d*)$')
    if gi then
      gi, b = tonumber(gi), tonumber(b)
      local grp = st.g[gi]
      if grp == nil then grp = {}; st.g[gi] = grp end
      local bk = grp[b]
      if bk == nil then bk = {0}; grp[b] = bk end
      if stat == 'n' then bk[1] = v else bk[OFFSET[stat] + tonumber(fs)] = v end
    else
      local g2, which = string.match(f, '^(%d+)|(%a%a)$')
      if g2 then
        st[which][tonumber(g2)] = v
      elseif f == 'lt' then
        st.lt = v
      else
        local lf = string.match(f, '^l(%d+)$')
        if lf then st.l[tonumber(lf)] = v end
      end
    end
  end
  return st
end
local function state(k, slot)
  local st = states[k]
  if st == nil then
    st = parse(redis.call('HGETALL', k))
    states[k], changed[k], dropped[k], slot_of[k] = st, {b = {}, sc = {}}, {}, slot
    touched[#touched + 1] = k
  end
  return st
end

-- forget the buckets of group gi that left every window (at most `keep` + 1 of them)
local function expire_buckets(k, st, gi, g, newest)
  local sc = changed[k].sc
  local lo, hi = st.lo[gi], st.hi[gi]
  if lo == nil then
    st.lo[gi], st.hi[gi], sc[g.lok], sc[g.hik] = newest, newest, newest, newest
    return
  end
  if newest > hi then st.hi[gi], sc[g.hik], hi = newest, newest, newest end
  if newest < lo then st.lo[gi], sc[g.lok] = newest, newest; return end -- a late event's bucket
  local cutoff = newest - g.keep
  if lo > cutoff then return end
  local last = math.min(cutoff, hi)
  if last - lo > g.keep + 1 then lo = last - g.keep - 1 end -- older ones were dropped before
  local grp, cb, dl = st.g[gi] or {}, changed[k].b[gi], dropped[k]
  for b = lo, last do
    if grp[b] ~= nil then
      grp[b] = nil
      if cb ~= nil then cb[b] = nil end
      local p = gi .. '|' .. b .. '|'
      dl[#dl + 1] = p .. 'n'
      for _, f in ipairs(g.s) do dl[#dl + 1] = p .. 's' .. f end
      for _, f in ipairs(g.q) do dl[#dl + 1] = p .. 'q' .. f end
      for _, f in ipairs(g.m) do dl[#dl + 1] = p .. 'm' .. f end
      for _, f in ipairs(g.M) do dl[#dl + 1] = p .. 'M' .. f end
    end
  end
  st.lo[gi], sc[g.lok] = cutoff + 1, cutoff + 1
end

local out = {}
local keys, prev_t, prev_v, x = {}, {}, {}, {}
for i = 0, nev - 1 do
  local base = 3 + i * stride
  local ts = tonumber(ARGV[base + 2])
  local seen_key = prefix .. 'seen:{' .. ARGV[base + 1] .. '}'
  local fresh = redis.call('SET', seen_key, '1', 'NX', 'EX', dedupe_ttl)
  local late = ts < wm - lateness
  local nb = base + 2 + ne
  for f = 1, nn do x[f] = tonumber(ARGV[nb + f]) end
  for s = 1, ne do
    local ent = plan.ents[s]
    local k = prefix .. 'e:{' .. ent.tag .. '=' .. ARGV[base + 2 + s] .. '}'
    keys[s] = k
    local st = state(k, s)
    if ent.last then
      prev_t[s] = st.lt
      local vals = {}
      for _, f in ipairs(ent.lf) do vals[f] = st.l[f] end
      prev_v[s] = vals
    end
  end
  if fresh and late then
    -- not applied: forget the id again so that a replay is late too (not "seen")
    redis.call('DEL', seen_key)
  elseif fresh then
    if ts > wm then wm = ts end
    for gi, g in ipairs(plan.groups) do
      local k = keys[g.e]
      local st = states[k]
      local b = floor(ts / g.b)
      local grp = st.g[gi]
      if grp == nil then grp = {}; st.g[gi] = grp end
      local bk = grp[b]
      if bk == nil then
        expire_buckets(k, st, gi, g, b)
        bk = {0}
        grp[b] = bk
      end
      local cb = changed[k].b[gi]
      if cb == nil then cb = {}; changed[k].b[gi] = cb end
      cb[b] = true
      bk[1] = bk[1] + 1
      for _, f in ipairs(g.s) do bk[S + f] = (bk[S + f] or 0) + x[f] end
      for _, f in ipairs(g.q) do bk[Q + f] = (bk[Q + f] or 0) + x[f] * x[f] end
      for _, f in ipairs(g.m) do
        local old = bk[MI + f]
        if old == nil or x[f] < old then bk[MI + f] = x[f] end
      end
      for _, f in ipairs(g.M) do
        local old = bk[MA + f]
        if old == nil or x[f] > old then bk[MA + f] = x[f] end
      end
      for _, f in ipairs(g.h) do
        local hk = k .. ':h' .. gi .. ':' .. f .. ':' .. b
        redis.call('PFADD', hk, ARGV[nb + nn + f])
        redis.call('EXPIRE', hk, g.t)
      end
    end
    for s = 1, ne do
      local ent = plan.ents[s]
      if ent.last and (prev_t[s] == nil or ts >= prev_t[s]) then
        local st, sc = states[keys[s]], changed[keys[s]].sc
        st.lt, sc['lt'] = ts, ts
        for _, f in ipairs(ent.lf) do st.l[f], sc['l' .. f] = x[f], x[f] end
      end
    end
  end
  for _, r in ipairs(plan.reads) do
    local val = 0
    local a = r.a
    if a == 'l' or a == 't' then
      local lt = prev_t[r.e]
      if lt ~= nil and lt <= ts and ts - lt <= r.w then
        if a == 't' then val = ts - lt else val = prev_v[r.e][r.f] or 0 end
      end
    else
      local g = plan.groups[r.g]
      local k = keys[g.e]
      local top = floor(ts / g.b)
      if a == 'd' then
        local hks = {}
        for b = top - r.n + 1, top do hks[#hks + 1] = k .. ':h' .. r.g .. ':' .. r.f .. ':' .. b end
        val = redis.call('PFCOUNT', unpack(hks))
      else
        local grp = states[k].g[r.g]
        local c, s, q, mn, mx = 0, 0, 0, nil, nil
        local f = r.f
        if grp ~= nil then
          for b = top - r.n + 1, top do
            local bk = grp[b]
            if bk ~= nil then
              c = c + bk[1]
              if a == 's' or a == 'm' or a == 'v' then s = s + (bk[S + f] or 0) end
              if a == 'v' then q = q + (bk[Q + f] or 0) end
              if a == 'i' then
                local v = bk[MI + f]
                if v ~= nil and (mn == nil or v < mn) then mn = v end
              elseif a == 'x' then
                local v = bk[MA + f]
                if v ~= nil and (mx == nil or v > mx) then mx = v end
              end
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
    if val == floor(val) and val < 1e15 and val > -1e15 then
      out[#out + 1] = val  -- whole numbers travel as integers (cheaper than formatting)
    else
      out[#out + 1] = fmt('%.17g', val)
    end
  end
  local status = 0
  if late then status = 2 elseif fresh then status = 1 end
  out[#out + 1] = status
end

for _, k in ipairs(touched) do
  local st, ch, args = states[k], changed[k], {}
  for gi, cb in pairs(ch.b) do
    local g, grp = plan.groups[gi], st.g[gi]
    for b in pairs(cb) do
      local bk = grp[b]
      local p = gi .. '|' .. b .. '|'
      args[#args + 1] = p .. 'n'
      args[#args + 1] = bk[1]
      for _, f in ipairs(g.s) do args[#args + 1] = p .. 's' .. f; args[#args + 1] = fmt('%.17g', bk[S + f]) end
      for _, f in ipairs(g.q) do args[#args + 1] = p .. 'q' .. f; args[#args + 1] = fmt('%.17g', bk[Q + f]) end
      for _, f in ipairs(g.m) do args[#args + 1] = p .. 'm' .. f; args[#args + 1] = fmt('%.17g', bk[MI + f]) end
      for _, f in ipairs(g.M) do args[#args + 1] = p .. 'M' .. f; args[#args + 1] = fmt('%.17g', bk[MA + f]) end
    end
  end
  for f, v in pairs(ch.sc) do
    args[#args + 1] = f
    args[#args + 1] = fmt('%.17g', v)
  end
  if #args > 0 then
    redis.call('HSET', k, unpack(args))
    redis.call('EXPIRE', k, plan.ents[slot_of[k]].ttl)
  end
  if #dropped[k] > 0 then redis.call('HDEL', k, unpack(dropped[k])) end
end
if wm > wm0 then redis.call('SET', wmkey, fmt('%.17g', wm)) end
return out
