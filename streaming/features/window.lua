-- Apply a micro-batch of events to per-entity window state and return every event's features.
-- See docs/features.md (semantics) and streaming/features/layout.py (the plan).
-- KEYS: the batch's distinct entity keys, those of entity 1 first, then those of entity 2, ...
-- ARGV[1] = plan (JSON), ARGV[2] = key prefix, ARGV[3] = dedupe TTL (s), ARGV[4 .. 3+ne] = how many
-- keys of each entity; then per event: id, event time (s), the index in KEYS of each of its entities
-- (ne), numeric values (nn), distinct values (nh).
-- Returns one string of little-endian doubles: per event one value per read, then a status:
-- 0 seen before, 1 applied, 2 late (not applied).
--
-- An entity's state is one string of doubles (struct): a header (0, or 1 + #lf, the latest event
-- time, its values of the fields `last` reads), then per tile group of the entity the number of
-- live buckets and their records, oldest first. A record is the bucket number, the count, then the
-- group's sums, sums of squares, minima and maxima. All of the batch's entities are read with one
-- MGET and each changed one is written back once (SET ... EX).
local plan = cjson.decode(ARGV[1])
local prefix = ARGV[2]
local dedupe_ttl = ARGV[3]
local ne, nn, nh = plan.ne, plan.nn, plan.nh
local lateness = plan.late
local stride = 2 + ne + nn + nh
local a0 = 3 + ne
local nev = (#ARGV - a0) / stride
local floor, tonumber, spack, sunpack, unpack = math.floor, tonumber, struct.pack, struct.unpack, unpack
local rcall = redis.call

local fmts = {}
local function fmt_of(n)
  local f = fmts[n]
  if f == nil then f = '<' .. string.rep('d', n); fmts[n] = f end
  return f
end

-- the plan, flattened: per group its record width and the offsets of its fields in a record
local groups = plan.groups
local ngroups = #groups
local ents = plan.ents
for s = 1, ne do ents[s].groups = {}; ents[s].ttl_s = tostring(ents[s].ttl) end
for gi = 1, ngroups do
  local g = groups[gi]
  local w = 2
  local lists = {g.s, g.q, g.m, g.M}
  local offs = {}
  for li = 1, 4 do
    local o = {}
    local list = lists[li]
    for i = 1, #list do w = w + 1; o[list[i]] = w - 1 end -- offset from the record's first element
    offs[li] = o
  end
  g.w = w
  g.so, g.qo, g.mo, g.Mo = offs[1], offs[2], offs[3], offs[4]
  local eg = ents[g.e].groups
  eg[#eg + 1] = gi
end
local reads = plan.reads
local nreads = #reads
local lastreads = {} -- reads of the latest event ('l', 't'): taken before the event is applied
for r_i = 1, nreads do
  local r = reads[r_i]
  r.i = r_i
  if r.a == 'l' or r.a == 't' then
    lastreads[#lastreads + 1] = r
    if r.a == 'l' then
      for j, f in ipairs(ents[r.e].lf) do if f == r.f then r.li = j end end
    end
  elseif r.a ~= 'd' then
    local g = groups[r.g]
    r.b, r.w = g.b, g.w
    if r.a == 'i' then r.o = g.mo[r.f] elseif r.a == 'x' then r.o = g.Mo[r.f]
    elseif r.a ~= 'c' then r.o = g.so[r.f]; r.oq = g.qo[r.f] end
  end
end

local wmkey = prefix .. 'wm'
local wm0 = tonumber(rcall('GET', wmkey) or '') or 0
local wm = wm0

-- read every entity of the batch with one MGET (in slices: unpack has a stack limit)
local nkeys = #KEYS
local states, slot_of, dirty = {}, {}, {}
do
  local j = 0
  for s = 1, ne do
    for _ = 1, tonumber(ARGV[3 + s]) do j = j + 1; slot_of[j] = s end
  end
  for j0 = 1, nkeys, 1000 do
    local j1 = math.min(j0 + 999, nkeys)
    local got = rcall('MGET', unpack(KEYS, j0, j1))
    for k = j0, j1 do
      local v = got[k - j0 + 1]
      local st = {}
      if v then
        local ent = ents[slot_of[k]]
        local nhd, pos = sunpack('<d', v)
        if nhd > 0 then
          local hd = {sunpack(fmt_of(nhd), v, pos)}
          pos = hd[nhd + 1]
          st.lt = hd[1]
          local lv = {}
          for i = 2, nhd do lv[i - 1] = hd[i] end
          st.lv = lv
        end
        local eg = ent.groups
        for i = 1, #eg do
          local gi = eg[i]
          local nb
          nb, pos = sunpack('<d', v, pos)
          if nb > 0 then
            local n = nb * groups[gi].w
            local grp = {sunpack(fmt_of(n), v, pos)}
            pos = grp[n + 1]
            grp[n + 1] = nil
            st[gi] = grp
          end
        end
      end
      states[k] = st
    end
  end
end

local function encode(st, ent)
  local parts = {}
  local lt = st.lt
  if lt ~= nil then
    local lv = st.lv
    parts[1] = spack(fmt_of(2 + #lv), 1 + #lv, lt, unpack(lv))
  else
    parts[1] = spack('<d', 0)
  end
  local eg = ent.groups
  for i = 1, #eg do
    local gi = eg[i]
    local grp = st[gi]
    if grp == nil then
      parts[i + 1] = spack('<d', 0)
    else
      local n = #grp
      parts[i + 1] = spack(fmt_of(n + 1), n / groups[gi].w, unpack(grp))
    end
  end
  return table.concat(parts)
end

local out = {}
local ki, x = {}, {}
for i = 0, nev - 1 do
  local base = a0 + i * stride
  local ts = tonumber(ARGV[base + 2])
  local o0 = i * (nreads + 1)
  for s = 1, ne do ki[s] = tonumber(ARGV[base + 2 + s]) end
  -- the latest event before this one, as `last` / `seconds_since_last` read it
  for j = 1, #lastreads do
    local r = lastreads[j]
    local st = states[ki[r.e]]
    local lt = st.lt
    local val = 0
    if lt ~= nil and lt <= ts and ts - lt <= r.w then
      if r.a == 't' then val = ts - lt else val = st.lv[r.li] or 0 end
    end
    out[o0 + r.i] = val
  end
  local status = 2
  if ts >= wm - lateness then
    if rcall('SET', prefix .. 'seen:{' .. ARGV[base + 1] .. '}', '1', 'NX', 'EX', dedupe_ttl) then
      status = 1
    else
      status = 0
    end
  end
  if status == 1 then
    if ts > wm then wm = ts end
    local nb = base + 2 + ne
    for f = 1, nn do x[f] = tonumber(ARGV[nb + f]) end
    for gi = 1, ngroups do
      local g = groups[gi]
      local k = ki[g.e]
      local st = states[k]
      dirty[k] = true
      local b = floor(ts / g.b)
      local w = g.w
      local grp = st[gi]
      local p, len = 0, 0 -- p: the first element of b's record once found
      if grp == nil then
        grp = {}
        st[gi] = grp
      else
        len = #grp
        p = len - w + 1
        while p >= 1 and grp[p] > b do p = p - w end
      end
      if p >= 1 and grp[p] == b then
        grp[p + 1] = grp[p + 1] + 1
        for f, o in pairs(g.so) do grp[p + o] = grp[p + o] + x[f] end
        for f, o in pairs(g.qo) do grp[p + o] = grp[p + o] + x[f] * x[f] end
        for f, o in pairs(g.mo) do if x[f] < grp[p + o] then grp[p + o] = x[f] end end
        for f, o in pairs(g.Mo) do if x[f] > grp[p + o] then grp[p + o] = x[f] end end
      else
        -- a new bucket: its record goes after record p (p < 1: first); later ones move up
        p = (p < 1) and 1 or (p + w)
        for j = len, p, -1 do grp[j + w] = grp[j] end
        grp[p] = b
        grp[p + 1] = 1
        for f, o in pairs(g.so) do grp[p + o] = 0 + x[f] end
        for f, o in pairs(g.qo) do grp[p + o] = 0 + x[f] * x[f] end
        for f, o in pairs(g.mo) do grp[p + o] = x[f] end
        for f, o in pairs(g.Mo) do grp[p + o] = x[f] end
        len = len + w
        -- forget the buckets that left every window: b - keep and older
        local cutoff = b - g.keep
        local drop = 0
        while drop < len and grp[drop + 1] <= cutoff do drop = drop + w end
        if drop > 0 then
          for j = 1, len - drop do grp[j] = grp[j + drop] end
          for j = len - drop + 1, len do grp[j] = nil end
        end
      end
      local g_h_ = g.h
      for f_i = 1, #g_h_ do
        local f = g_h_[f_i]
        local hk = KEYS[k] .. ':h' .. gi .. ':' .. f .. ':' .. b
        rcall('PFADD', hk, ARGV[nb + nn + f])
        rcall('EXPIRE', hk, g.t)
      end
    end
    for s = 1, ne do
      local ent = ents[s]
      if ent.last then
        local st = states[ki[s]]
        if st.lt == nil or ts >= st.lt then
          st.lt = ts
          dirty[ki[s]] = true
          local lf = ent.lf
          local lv = st.lv
          if lv == nil then lv = {}; st.lv = lv end
          for j = 1, #lf do lv[j] = x[lf[j]] end
        end
      end
    end
  end
  for r_i = 1, nreads do
    local r = reads[r_i]
    local a = r.a
    if a == 'd' then
      local k = ki[r.e]
      local top = floor(ts / groups[r.g].b)
      local hks = {}
      for b = top - r.n + 1, top do hks[#hks + 1] = KEYS[k] .. ':h' .. r.g .. ':' .. r.f .. ':' .. b end
      out[o0 + r_i] = rcall('PFCOUNT', unpack(hks))
    elseif a ~= 'l' and a ~= 't' then
      local grp = states[ki[r.e]][r.g]
      local val = 0
      if grp ~= nil then
        local top = floor(ts / r.b)
        local lo = top - r.n + 1
        local w, len = r.w, #grp
        local p = 1
        while p <= len and grp[p] < lo do p = p + w end
        if a == 'c' then
          local c = 0
          while p <= len and grp[p] <= top do c = c + grp[p + 1]; p = p + w end
          val = c
        elseif a == 's' or a == 'm' then
          local c, s, o = 0, 0, r.o
          while p <= len and grp[p] <= top do c = c + grp[p + 1]; s = s + grp[p + o]; p = p + w end
          if a == 's' then val = s elseif c > 0 then val = s / c end
        elseif a == 'v' then
          local c, s, q, o, oq = 0, 0, 0, r.o, r.oq
          while p <= len and grp[p] <= top do
            c = c + grp[p + 1]; s = s + grp[p + o]; q = q + grp[p + oq]; p = p + w
          end
          if c > 0 then
            local mu = s / c
            local var = q / c - mu * mu
            if var > 0 then val = math.sqrt(var) end
          end
        else -- 'i' min, 'x' max
          local o, m = r.o, nil
          while p <= len and grp[p] <= top do
            local v = grp[p + o]
            if m == nil or (a == 'i' and v < m) or (a == 'x' and v > m) then m = v end
            p = p + w
          end
          val = m or 0
        end
      end
      out[o0 + r_i] = val
    end
  end
  out[o0 + nreads + 1] = status
end

for k = 1, nkeys do
  if dirty[k] then
    local ent = ents[slot_of[k]]
    rcall('SET', KEYS[k], encode(states[k], ent), 'EX', ent.ttl_s)
  end
end
if wm > wm0 then rcall('SET', wmkey, string.format('%.17g', wm)) end

local parts = {}
for j = 1, #out, 4000 do
  local j1 = math.min(j + 3999, #out)
  parts[#parts + 1] = spack(fmt_of(j1 - j + 1), unpack(out, j, j1))
end
return table.concat(parts)
