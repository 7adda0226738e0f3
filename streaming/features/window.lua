-- Apply a micro-batch of events to per-entity tiles and return their window features.
-- ARGV[1] = plan (JSON, see streaming/features/layout.py), ARGV[2] = key prefix,
-- ARGV[3] = dedupe TTL (s); then per event: id, event time (s), entity values..., field values...
-- Returns, per event, one value per window read followed by '1' (applied) or '0' (seen before).
local plan = cjson.decode(ARGV[1])
local prefix = ARGV[2]
local dedupe_ttl = tonumber(ARGV[3])
local ne, nf = plan.ne, plan.nf
local stride = 2 + ne + nf
local out = {}
local nev = (#ARGV - 3) / stride
for i = 0, nev - 1 do
  local base = 3 + i * stride
  local eid = ARGV[base + 1]
  local ts = tonumber(ARGV[base + 2])
  local fresh = redis.call('SET', prefix .. 'seen:{' .. eid .. '}', '1', 'NX', 'EX', dedupe_ttl)
  local gkeys, gidx = {}, {}
  for gi, g in ipairs(plan.groups) do
    local ent = ARGV[base + 2 + g.e]
    local b = math.floor(ts / g.b)
    local gk = prefix .. 'w:{' .. g.tag .. '=' .. ent .. '}:' .. g.b .. ':'
    gkeys[gi], gidx[gi] = gk, b
    if fresh then
      local k = gk .. b
      redis.call('HINCRBY', k, 'n', 1)
      for _, fs in ipairs(g.f) do
        redis.call('HINCRBYFLOAT', k, 's' .. fs, ARGV[base + 2 + ne + fs])
      end
      redis.call('EXPIRE', k, g.t)
    end
  end
  for _, r in ipairs(plan.reads) do
    local gk, top = gkeys[r.g], gidx[r.g]
    local c, s = 0, 0
    for b = top - r.n + 1, top do
      local v = redis.call('HMGET', gk .. b, 'n', 's' .. r.f)
      c = c + (tonumber(v[1]) or 0)
      s = s + (tonumber(v[2]) or 0)
    end
    local val = c
    if r.a == 's' then val = s elseif r.a == 'm' then if c > 0 then val = s / c else val = 0 end end
    out[#out + 1] = string.format('%.17g', val)
  end
  out[#out + 1] = fresh and '1' or '0'
end
return out
