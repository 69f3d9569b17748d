#!/usr/bin/env node
import { main } from './main.js';
import { exitOnceWritten, finishWhenStdoutCloses } from './output.js';

finishWhenStdoutCloses();
exitOnceWritten(await main(process.argv));
