-- Apply a micro-batch of events to per-entity window state and return every event's features.
-- See docs/features.md (semantics) and streaming/features/layout.py (the plan).
-- ARGV[1] = plan (JSON), ARGV[2] = key prefix, ARGV[3] = dedupe TTL (s); then per event:
--   id, event time (s), entity values (ne), numeric values (nn), distinct values (nh).
-- Returns per event: one value per read, then a status: 0 seen before, 1 applied, 2 late (not applied).
-- Each entity's state is one MessagePack value: all of the batch's entities are read with one MGET,
-- updated in Lua, and each written back once (SET ... EX).
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

local wmkey = prefix .. 'wm'
local wm0 = tonumber(redis.call('GET', wmkey) or '') or 0
local wm = wm0

-- per entity key: st.g[group][bucket] = bucket array, st.lo/hi[group] (live bucket range),
-- st.lt (latest event time), st.l[field] (its values)
local states, dirty, slot_of, touched = {}, {}, {}, {}
do -- read every entity of the batch with one MGET
  local wanted, seen = {}, {}
  for i = 0, nev - 1 do
    local base = 3 + i * stride
    for s = 1, ne do
      local k = prefix .. 'e:{' .. plan.ents[s].tag .. '=' .. ARGV[base + 2 + s] .. '}'
      if not seen[k] then seen[k] = true; wanted[#wanted + 1] = k; slot_of[k] = s end
    end
  end
  local got = {}
  for j = 1, #wanted, 1000 do
    local part = redis.call('MGET', unpack(wanted, j, math.min(j + 999, #wanted)))
    for _, v in ipairs(part) do got[#got + 1] = v end
  end
  for j, k in ipairs(wanted) do
    local v = got[j]
    if v then states[k] = cmsgpack.unpack(v) else states[k] = {g = {}, lo = {}, hi = {}, l = {}} end
    touched[j] = k
  end
end

-- forget the buckets of group gi that left every window (at most `keep` + 1 of them)
local function expire_buckets(st, gi, g, newest)
  local lo, hi = st.lo[gi], st.hi[gi]
  if lo == nil then
    st.lo[gi], st.hi[gi] = newest, newest
    return
  end
  if newest > hi then st.hi[gi], hi = newest, newest end
  if newest < lo then st.lo[gi] = newest; return end -- a late event's bucket
  local cutoff = newest - g.keep
  if lo > cutoff then return end
  local last = math.min(cutoff, hi)
  if last - lo > g.keep + 1 then lo = last - g.keep - 1 end -- older ones were dropped before
  local grp = st.g[gi]
  if grp ~= nil then
    for b = lo, last do grp[b] = nil end
  end
  st.lo[gi] = cutoff + 1
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
    local st = states[k]
    if ent.last then
      prev_t[s] = st.lt
      local vals = {}
      local ent_lf_ = ent.lf
      for f_i = 1, #ent_lf_ do local f = ent_lf_[f_i]
        vals[f] = st.l[f]
      end
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
        expire_buckets(st, gi, g, b)
        bk = {0}
        grp[b] = bk
      end
      dirty[k] = true
      bk[1] = bk[1] + 1
      local g_s_ = g.s
      for f_i = 1, #g_s_ do local f = g_s_[f_i]
        bk[S + f] = (bk[S + f] or 0) + x[f]
      end
      local g_q_ = g.q
      for f_i = 1, #g_q_ do local f = g_q_[f_i]
        bk[Q + f] = (bk[Q + f] or 0) + x[f] * x[f]
      end
      local g_m_ = g.m
      for f_i = 1, #g_m_ do local f = g_m_[f_i]
        local old = bk[MI + f]
        if old == nil or x[f] < old then bk[MI + f] = x[f] end
      end
      local g_M_ = g.M
      for f_i = 1, #g_M_ do local f = g_M_[f_i]
        local old = bk[MA + f]
        if old == nil or x[f] > old then bk[MA + f] = x[f] end
      end
      local g_h_ = g.h
      for f_i = 1, #g_h_ do local f = g_h_[f_i]
        local hk = k .. ':h' .. gi .. ':' .. f .. ':' .. b
        redis.call('PFADD', hk, ARGV[nb + nn + f])
        redis.call('EXPIRE', hk, g.t)
      end
    end
    for s = 1, ne do
      local ent = plan.ents[s]
      if ent.last and (prev_t[s] == nil or ts >= prev_t[s]) then
        local st = states[keys[s]]
        st.lt = ts
        dirty[keys[s]] = true
        local ent_lf_ = ent.lf
        for f_i = 1, #ent_lf_ do local f = ent_lf_[f_i]
          st.l[f] = x[f]
        end
      end
    end
  end
  local plan_reads_ = plan.reads
  for r_i = 1, #plan_reads_ do local r = plan_reads_[r_i]
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

local touched_ = touched
for k_i = 1, #touched_ do local k = touched_[k_i]
  if dirty[k] then
    redis.call('SET', k, cmsgpack.pack(states[k]), 'EX', plan.ents[slot_of[k]].ttl)
  end
end
if wm > wm0 then redis.call('SET', wmkey, fmt('%.17g', wm)) end
return out
