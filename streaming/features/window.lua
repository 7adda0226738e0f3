-- Apply a micro-batch of events to per-entity window state and return every event's features.
-- See docs/features.md (semantics) and streaming/features/layout.py (the plan).
-- KEYS: the batch's distinct entity keys, those of entity 1 first, then those of entity 2, ...,
-- then the watermark keys (one per input partition of the batch: the watermark is per partition,
-- so one partition's clock never makes another's events late).
-- ARGV[1] = the applied-id sets' key prefix (`<prefix>seen:`; in a Redis Cluster one per slot,
-- `<prefix>seen:{<slot tag>}:`), ARGV[2] = dedupe period (s), ARGV[3 .. 2+ne] = how many keys of each
-- entity, ARGV[3+ne] = how many watermark keys, ARGV[4+ne] = the clock (epoch s; 0: none): a
-- watermark never moves past it, so an event stamped ahead of the clock (within the pipeline's
-- future bound) cannot make the partition's on-time events late, ARGV[5+ne] = the batch's numbers as little-endian
-- doubles, per event: event time (s), the index of its watermark key (1-based, among the
-- watermark keys), the index in KEYS of each of its entities (ne), its numeric values (nn);
-- then per event: id, distinct values (nh).
-- A call for one Redis Cluster slot (store.py: the batch split by slot) passes no watermark keys:
-- the lateness was decided before (one call on the watermarks' slot), and an event's watermark
-- index is then 0 (on time) or -1 (late); an entity index of 0 means the entity is in another slot
-- (this call neither applies nor reads it: its reads are 0 here and come from that slot's call).
-- Returns one string of little-endian doubles: per event one value per read, then a status:
-- 0 seen before, 1 applied, 2 late (not applied).
--
-- An entity's state is one flat array of numbers, stored as little-endian doubles (struct): the
-- header length H, a header of H numbers (entities that `last` reads: the latest event time, -inf
-- when none, and its values of the fields read), then per tile group of the entity the number of
-- live buckets and their records, oldest first. A record is the bucket number, the count, then the
-- group's sums, sums of squares, minima and maxima. All of the batch's entities are read with one
-- MGET, updated in place, and each changed one is written back once (SET ... EX).
-- `plan` and NONE (-inf) are defined above this text by store.py (WindowPlan.to_script_plan)
local seenp = ARGV[1]
local dedupe_ttl = tonumber(ARGV[2])
local ne, nn, nh = plan.ne, plan.nn, plan.nh
local lateness = plan.late
local m = 2 + ne + nn -- numbers per event
local stride = 1 + nh -- strings per event
local nwm = tonumber(ARGV[3 + ne])
local clock = tonumber(ARGV[4 + ne])
if clock <= 0 then clock = math.huge end
local a0 = 5 + ne
local nev = (#ARGV - a0) / stride
local floor, tonumber, spack, sunpack, unpack = math.floor, tonumber, struct.pack, struct.unpack, unpack
local rcall = redis.call

local fmts = {}
local function fmt_of(n)
  local f = fmts[n]
  if f == nil then f = '<' .. string.rep('d', n); fmts[n] = f end
  return f
end

local groups, ents, reads = plan.groups, plan.ents, plan.reads
local ngroups, nreads = #groups, #reads
local lastreads = {} -- reads of the latest event ('l', 't'): taken before the event is applied
for r_i = 1, nreads do
  local r = reads[r_i]
  if r.a == 'l' or r.a == 't' then r.i = r_i; lastreads[#lastreads + 1] = r end
end

-- where group number ei of an entity starts in its state (the index of its bucket count)
local function gstart(st, widths, ei)
  local p = 2 + st[1]
  for j = 1, ei - 1 do p = p + 1 + st[p] * widths[j] end
  return p
end

-- applied ids: one set per dedupe period; an id is looked up in this period's set and the
-- previous one, so it is remembered for at least one period and at most two
local gen = floor(tonumber(rcall('TIME')[1]) / dedupe_ttl)
local genkey, prevkey, metakey = seenp .. gen, seenp .. (gen - 1), seenp .. 'gen'
local nkeys = #KEYS - nwm
local meta = rcall('MGET', metakey, unpack(KEYS, nkeys + 1, #KEYS))
local wm0, wms = {}, {[0] = NONE, [-1] = math.huge} -- 0: on time, -1: late (decided by the caller)
for w = 1, nwm do
  wm0[w] = tonumber(meta[w + 1] or '') or 0
  wms[w] = wm0[w]
end

local seen = {}
do
  local ids = {}
  for i = 0, nev - 1 do ids[i + 1] = ARGV[a0 + 1 + i * stride] end
  for _, key in ipairs({genkey, prevkey}) do
    for j0 = 1, nev, 1000 do
      local j1 = math.min(j0 + 999, nev)
      local got = rcall('SMISMEMBER', key, unpack(ids, j0, j1))
      for j = j0, j1 do if got[j - j0 + 1] == 1 then seen[ids[j]] = true end end
    end
  end
end
local added = {}

-- the batch's numbers (in slices: unpack and the C stack have limits)
local N
do
  local total = nev * m
  if total <= 4000 then
    N = {sunpack(fmt_of(total), ARGV[a0])}
  else
    N = {}
    for j0 = 0, total - 1, 4000 do
      local cnt = math.min(4000, total - j0)
      local part = {sunpack(fmt_of(cnt), ARGV[a0], j0 * 8 + 1)}
      for j = 1, cnt do N[j0 + j] = part[j] end
    end
  end
end

-- every entity of the batch, read with one MGET (in slices)
local states, slot_of, dirty = {}, {}, {}
do
  local j = 0
  for s = 1, ne do
    for _ = 1, tonumber(ARGV[2 + s]) do j = j + 1; slot_of[j] = s end
  end
  for j0 = 1, nkeys, 1000 do
    local j1 = math.min(j0 + 999, nkeys)
    local got = rcall('MGET', unpack(KEYS, j0, j1))
    for k = j0, j1 do
      local v = got[k - j0 + 1]
      local st
      if v then
        local n = #v / 8
        st = {sunpack(fmt_of(n), v)}
        st[n + 1] = nil
      else
        st = {unpack(ents[slot_of[k]].new)}
      end
      states[k] = st
    end
  end
end

local out = {}
local ki, x = {}, {}
for i = 0, nev - 1 do
  local base = a0 + i * stride
  local nb = i * m
  local ts = N[nb + 1]
  local wi = N[nb + 2]
  local o0 = i * (nreads + 1)
  for s = 1, ne do ki[s] = N[nb + 2 + s] end
  -- the latest event before this one, as `last` / `seconds_since_last` read it
  for j = 1, #lastreads do
    local r = lastreads[j]
    local st = states[ki[r.e]]
    local val = 0
    if st then
      local lt = st[2]
      if lt <= ts and ts - lt <= r.w then
        if r.a == 't' then val = ts - lt else val = st[2 + r.li] end
      end
    end
    out[o0 + r.i] = val
  end
  local status = 2
  if ts >= wms[wi] - lateness then
    local id = ARGV[base + 1]
    if seen[id] then
      status = 0
    else
      status = 1
      seen[id] = true
      added[#added + 1] = id
    end
  end
  if status == 1 then
    if wi > 0 then
      local moved = ts
      if moved > clock then moved = clock end
      if moved > wms[wi] then wms[wi] = moved end
    end
    for f = 1, nn do x[f] = N[nb + 2 + ne + f] end
    for gi = 1, ngroups do
      local g = groups[gi]
      local k = ki[g.e]
      if k ~= 0 then -- 0: the entity is in another slot's call
        local st = states[k]
        dirty[k] = true
        local b = floor(ts / g.b)
        local w = g.w
        local gp = gstart(st, ents[g.e].widths, g.ei)
        local cnt = st[gp]
        local first, last = gp + 1, gp + cnt * w -- the group's records: st[first .. last]
        local p = last - w + 1
        while p >= first and st[p] > b do p = p - w end
        local sf, sa, qf, qa, mf, ma, Mf, Ma = g.s, g.sa, g.q, g.qa, g.m, g.ma, g.M, g.Ma
        if p >= first and st[p] == b then
          st[p + 1] = st[p + 1] + 1
          for j = 1, #sf do local o = p + sa[j]; st[o] = st[o] + x[sf[j]] end
          for j = 1, #qf do local o, v = p + qa[j], x[qf[j]]; st[o] = st[o] + v * v end
          for j = 1, #mf do local o, v = p + ma[j], x[mf[j]]; if v < st[o] then st[o] = v end end
          for j = 1, #Mf do local o, v = p + Ma[j], x[Mf[j]]; if v > st[o] then st[o] = v end end
        else
          -- a new bucket: its record goes after record p (or first); what follows moves up
          p = (p < first) and first or (p + w)
          local len = #st
          for j = len, p, -1 do st[j + w] = st[j] end
          st[p] = b
          st[p + 1] = 1
          for j = 1, #sf do st[p + sa[j]] = 0 + x[sf[j]] end
          for j = 1, #qf do local v = x[qf[j]]; st[p + qa[j]] = 0 + v * v end
          for j = 1, #mf do st[p + ma[j]] = x[mf[j]] end
          for j = 1, #Mf do st[p + Ma[j]] = x[Mf[j]] end
          cnt = cnt + 1
          len = len + w
          -- forget the buckets that left every window: b - keep and older, b taken no later than the clock
          -- (an event stamped ahead must not push the present out of the entity's windows)
          local cutoff = b - g.keep
          if ts > clock then cutoff = floor(clock / g.b) - g.keep end
          local drop = 0
          while st[first + drop] <= cutoff do drop = drop + w end
          if drop > 0 then
            for j = first, len - drop do st[j] = st[j + drop] end
            for j = len - drop + 1, len do st[j] = nil end
            cnt = cnt - drop / w
          end
          st[gp] = cnt
        end
        local g_h_ = g.h
        for f_i = 1, #g_h_ do
          local f = g_h_[f_i]
          local hk = KEYS[k] .. ':h' .. gi .. ':' .. f .. ':' .. b
          rcall('PFADD', hk, ARGV[base + 1 + f])
          rcall('EXPIRE', hk, g.t)
        end
      end
    end
    for s = 1, ne do
      local ent = ents[s]
      if ent.last and ki[s] ~= 0 then
        local st = states[ki[s]]
        if ts >= st[2] then
          st[2] = ts
          dirty[ki[s]] = true
          local lf = ent.lf
          for j = 1, #lf do st[2 + j] = x[lf[j]] end
        end
      end
    end
  end
  for r_i = 1, nreads do
    local r = reads[r_i]
    local a = r.a
    if ki[r.e] == 0 then
      out[o0 + r_i] = 0 -- the entity is in another slot's call, which reads it
    elseif a == 'd' then
      local k = ki[r.e]
      local top = floor(ts / groups[r.g].b)
      local hks = {}
      for b = top - r.n + 1, top do hks[#hks + 1] = KEYS[k] .. ':h' .. r.g .. ':' .. r.f .. ':' .. b end
      out[o0 + r_i] = rcall('PFCOUNT', unpack(hks))
    elseif a ~= 'l' and a ~= 't' then
      local st = states[ki[r.e]]
      local val = 0
      local gp = gstart(st, ents[r.e].widths, r.ei)
      local w = r.rw
      local p, last = gp + 1, gp + st[gp] * w
      local top = floor(ts / r.b)
      local lo = top - r.n + 1
      while p <= last and st[p] < lo do p = p + w end
      if a == 'c' then
        local c = 0
        while p <= last and st[p] <= top do c = c + st[p + 1]; p = p + w end
        val = c
      elseif a == 's' or a == 'm' then
        local c, s, o = 0, 0, r.o
        while p <= last and st[p] <= top do c = c + st[p + 1]; s = s + st[p + o]; p = p + w end
        if a == 's' then val = s elseif c > 0 then val = s / c end
      elseif a == 'v' then
        local c, s, q, o, oq = 0, 0, 0, r.o, r.oq
        while p <= last and st[p] <= top do
          c = c + st[p + 1]; s = s + st[p + o]; q = q + st[p + oq]; p = p + w
        end
        if c > 0 then
          local mu = s / c
          local var = q / c - mu * mu
          if var > 0 then val = math.sqrt(var) end
        end
      else -- 'i' min, 'x' max
        local o, mm = r.o, nil
        while p <= last and st[p] <= top do
          local v = st[p + o]
          if mm == nil or (a == 'i' and v < mm) or (a == 'x' and v > mm) then mm = v end
          p = p + w
        end
        val = mm or 0
      end
      out[o0 + r_i] = val
    end
  end
  out[o0 + nreads + 1] = status
end

for k = 1, nkeys do
  if dirty[k] then
    local st = states[k]
    rcall('SET', KEYS[k], spack(fmt_of(#st), unpack(st)), 'EX', ents[slot_of[k]].ttl)
  end
end
for w = 1, nwm do
  if wms[w] > wm0[w] then rcall('SET', KEYS[nkeys + w], string.format('%.17g', wms[w])) end
end
if #added > 0 then
  for j0 = 1, #added, 1000 do rcall('SADD', genkey, unpack(added, j0, math.min(j0 + 999, #added))) end
  if tonumber(meta[1] or '') ~= gen then
    -- a new period: this set lives until the end of the next one; the one before the previous is
    -- freed now, in the background (UNLINK), rather than by expiry (a large set blocks when freed)
    rcall('EXPIREAT', genkey, (gen + 2) * dedupe_ttl + 60)
    rcall('UNLINK', seenp .. (gen - 2))
    rcall('SET', metakey, gen)
  end
end

local parts = {}
for j = 1, #out, 4000 do
  local j1 = math.min(j + 3999, #out)
  parts[#parts + 1] = spack(fmt_of(j1 - j + 1), unpack(out, j, j1))
end
return table.concat(parts)
